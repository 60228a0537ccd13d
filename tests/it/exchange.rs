//! The authorization-code exchange against the sandbox's code grant, on both stores: a re-authorization
//! completed (the episode closes, the stored pair is Astra's live one), a code used twice, a code that expired,
//! a code of another user, a user Astra does not know.

use astra_worker::{
    failure::Status,
    sandbox::{SandboxSettings, state::CODE_LIFETIME},
    tokens::{self, Refreshed, store as grant_store},
};
use chrono::{TimeDelta, Utc};
use secrecy::SecretString;

use crate::{
    both_backends,
    helpers::{Backend, TestApp},
    with_pool,
};

async fn open_episodes(store: &astra_worker::store::Store) -> i64 {
    with_pool!(store, |p| sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM reauth_episode WHERE closed_at IS NULL")
        .fetch_one(p)
        .await
        .unwrap())
}

async fn a_code_completes_the_re_authorization_once_and_only_for_its_user(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let svc = w.services().unwrap();
    let users = rig.seed(&w.store, 2, |_| TimeDelta::days(3)).await;
    let (u, other) = (&users[0], &users[1]);

    // The grant dies at Astra and the worker finds out: an episode opens.
    rig.sandbox.state().revoke_grant(u);
    let now = Utc::now();
    assert!(grant_store::try_lease(&w.store, u, "test", now + TimeDelta::minutes(1), now).await.unwrap());
    let r = tokens::refresh_leased(&w.store, &svc.tokens, astra_worker::astra::Call::default(), u, "test", None)
        .await
        .unwrap();
    assert!(matches!(r, Refreshed::Dead { .. }), "{r:?}");
    assert_eq!(open_episodes(&w.store).await, 1);

    // The user consents again; the redirect handler hands the code over.
    let code = SecretString::from(rig.sandbox.state().mint_code(u).unwrap());
    let done = tokens::exchange(&w.store, &svc.tokens, u, &code, Utc::now()).await.unwrap();
    assert_eq!(done.grant, "replaced");
    assert!(done.episode_open_for_secs.is_some());
    assert_eq!(open_episodes(&w.store).await, 0, "the exchange closes the re-authorization episode");
    assert!(rig.stored_is_live(&w.store, u).await, "the stored pair is the one the code issued");
    assert!(tokens::access_token(&w.store, &svc.tokens, u).await.is_ok());

    // The same code again: Astra refuses it; nothing changes.
    let e = tokens::exchange(&w.store, &svc.tokens, u, &code, Utc::now()).await.unwrap_err();
    assert_eq!(astra_worker::exit::classify(&e), Status::No, "{e:#}");
    assert!(format!("{e:#}").contains("refused the authorization code"), "{e:#}");
    assert!(rig.stored_is_live(&w.store, u).await);

    // A code that outlived its few minutes.
    let late = SecretString::from(rig.sandbox.state().mint_code(u).unwrap());
    rig.sandbox.state().advance_clock(CODE_LIFETIME + TimeDelta::seconds(1));
    let e = tokens::exchange(&w.store, &svc.tokens, u, &late, Utc::now()).await.unwrap_err();
    assert_eq!(astra_worker::exit::classify(&e), Status::No, "{e:#}");
    rig.sandbox.state().advance_clock(-(CODE_LIFETIME + TimeDelta::seconds(1)));

    // Another user's code handed over for `u`: refused, and neither grant is touched in the store.
    let before = tokens::load(&w.store, &crate::helpers::keyring(), u).await.unwrap().unwrap().version;
    let theirs = SecretString::from(rig.sandbox.state().mint_code(other).unwrap());
    let e = tokens::exchange(&w.store, &svc.tokens, u, &theirs, Utc::now()).await.unwrap_err();
    assert_eq!(astra_worker::exit::classify(&e), Status::No);
    assert!(format!("{e:#}").contains("belongs to another Astra user"), "{e:#}");
    let after = tokens::load(&w.store, &crate::helpers::keyring(), u).await.unwrap().unwrap().version;
    assert_eq!(before, after, "nothing was stored for {u}");

    // A user Astra does not know has no code to hand over.
    assert!(rig.sandbox.state().mint_code("nobody").is_none());
    // A code for a user the worker has never seen: a new grant.
    rig.sandbox.state().upsert_user(astra_worker::sandbox::UserRec {
        id: "newcomer".into(),
        status: astra_worker::astra::UserStatus::Approved,
        phone: None,
        email: None,
    });
    let code = SecretString::from(rig.sandbox.state().mint_code("newcomer").unwrap());
    let done = tokens::exchange(&w.store, &svc.tokens, "newcomer", &code, Utc::now()).await.unwrap();
    assert_eq!(done.grant, "new");
    assert!(rig.stored_is_live(&w.store, "newcomer").await);
}
both_backends!(
    a_code_completes_the_re_authorization_once_and_only_for_its_user,
    super::a_code_completes_the_re_authorization_once_and_only_for_its_user
);
