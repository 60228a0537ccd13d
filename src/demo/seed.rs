//! The demo's world: users of every kind at the sandbox and in the store, the fintech's registry, and what
//! changes between two jobs.

use chrono::{TimeDelta, Utc};
use secrecy::SecretString;

use crate::{
    astra::{TransferStatus, UserStatus},
    domain::money::Cents,
    reconcile::mirror,
    reconcile::registry::{self, AchCreditLine, DestinationKind, DestinationLine, ImportLine as RegistryLine},
    sandbox::CardRec,
    sandbox::{Hold, Sandbox, TransferRec},
    store::Store,
    tokens::Keyring,
    tokens::{self, ImportLine, store as grant_store},
};

/// Kinds of seeded users, by share of the total.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Fresh,
    Due,
    NearExpiry,
    Expired,
    Revoked,
    Suspended,
}

pub(super) fn kind_of(i: usize) -> Kind {
    match i % 20 {
        0..=7 => Kind::Fresh,
        8..=14 => Kind::Due,
        15 | 16 => Kind::NearExpiry,
        17 => Kind::Expired,
        18 => Kind::Revoked,
        _ => Kind::Suspended,
    }
}

fn age(k: Kind, i: usize) -> TimeDelta {
    let jitter = TimeDelta::minutes((i as i64 * 37) % 600);
    match k {
        Kind::Fresh => TimeDelta::days(1) + jitter,
        Kind::Due | Kind::Revoked => TimeDelta::days(7) + jitter,
        Kind::NearExpiry => TimeDelta::days(9) + TimeDelta::hours(12) + jitter / 10,
        Kind::Expired | Kind::Suspended => TimeDelta::days(11) + jitter,
    }
}

#[derive(Default)]
pub(super) struct Seeded {
    counts: [usize; 6],
    transfers: usize,
}

impl Seeded {
    pub(super) fn describe(&self) -> String {
        let [fresh, due, near, expired, revoked, suspended] = self.counts;
        format!(
            "{fresh} fresh, {due} due this week, {near} near expiry, {expired} expired, {revoked} revoked at Astra, \
             {suspended} suspended (and expired); {} transfers, some over the bank limit or held for reprocessing",
            self.transfers
        )
    }
}

pub(super) async fn users(sandbox: &Sandbox, store: &Store, keyring: &Keyring, n: usize) -> anyhow::Result<Seeded> {
    let mut seeded = Seeded::default();
    let now = Utc::now();
    for i in 0..n {
        let k = kind_of(i);
        let id = format!("demo-user-{i:04}");
        let issued = now - age(k, i);
        let g = {
            let mut s = sandbox.state();
            let g = s.add_approved_user(&id, Some(format!("+1555{i:07}")), issued);
            if k == Kind::Suspended {
                s.set_user_status(&id, UserStatus::Suspended);
            }
            if k == Kind::Revoked {
                s.revoke_grant(&id);
            }
            // A client-issued card for some users, frozen, holding one transfer.
            if i % 50 == 3 {
                s.add_card(CardRec {
                    id: format!("card-{i:04}"),
                    user_id: id.clone(),
                    status: "approved".into(),
                    push_enabled: true,
                    pull_enabled: true,
                    frozen: true,
                });
                let at = now - TimeDelta::hours(3);
                s.add_transfer(TransferRec {
                    id: format!("demo-trf-{i:04}-card"),
                    user_id: id.clone(),
                    routine_id: Some(format!("rtn-card-{i:04}")),
                    routine_type: Some("account-to-card".into()),
                    client_correlation_id: None,
                    source_id: Some(format!("acct-src-{i}")),
                    destination_id: Some(format!("card-{i:04}")),
                    amount: Cents(12_500),
                    payment_type: "debit".into(),
                    initiated: at,
                    updated: at,
                    estimated_clearing_date: at.date_naive(),
                    status: TransferStatus::Pending,
                    hold: Some(Hold::CardFrozen { card_id: format!("card-{i:04}") }),
                    failure_reason: None,
                });
                seeded.transfers += 1;
            }
            // Inbound transfers: one a day, some over the $2,500 limit, a few held for reprocessing.
            for d in 0..3 {
                let at = now - TimeDelta::hours(6 + 24 * d);
                let cents = 40_000 + ((i as i64 * 7919 + d * 104_729) % 250_000);
                let hold = match (i % 25, d) {
                    (3, 0) => Some(Hold::DailyLimit { clears_at: s.bank_day_end(at) }),
                    _ => None,
                };
                let tid = format!("demo-trf-{i:04}-{d}");
                s.add_transfer(TransferRec {
                    id: tid,
                    user_id: id.clone(),
                    routine_id: None,
                    routine_type: Some("one-time".into()),
                    client_correlation_id: None,
                    source_id: Some(format!("acct-src-{i}")),
                    destination_id: Some(format!("acct-{i:04}")),
                    amount: Cents(cents),
                    payment_type: "ach".into(),
                    initiated: at,
                    updated: at,
                    estimated_clearing_date: (at + TimeDelta::days(1)).date_naive(),
                    status: if hold.is_some() { TransferStatus::Pending } else { TransferStatus::Processed },
                    hold,
                    failure_reason: None,
                });
                seeded.transfers += 1;
            }
            g
        };
        let line = ImportLine {
            user_id: id.clone(),
            access_token: SecretString::from(g.access_token),
            refresh_token: SecretString::from(g.refresh_token),
            refresh_token_issued_at: Some(issued.fixed_offset()),
            refresh_token_expires_at: None,
            access_token_expires_at: Some(g.access_expires_at.fixed_offset()),
            phone: Some(format!("+1555{i:07}")),
        };
        tokens::import(store, keyring, &line, now).await?;
        register(store, &id, i).await?;
        if k == Kind::Suspended {
            // What an earlier read of `GET /v1/user` would have recorded.
            grant_store::set_user_status(store, &id, UserStatus::Suspended, now).await?;
        }
        seeded.counts[k as usize] += 1;
    }
    Ok(seeded)
}

/// The fintech's registry: each user's account with a $2,500 daily limit (some banks in Chicago), and the
/// frozen cards.
async fn register(store: &Store, user_id: &str, i: usize) -> anyhow::Result<()> {
    let zone = if i.is_multiple_of(7) { "America/Chicago" } else { "America/New_York" };
    let mut lines = vec![RegistryLine::Destination(DestinationLine {
        destination_id: format!("acct-{i:04}"),
        user_id: user_id.into(),
        kind: DestinationKind::Account,
        bank_time_zone: zone.into(),
        daily_limit_cents: DEMO_LIMIT.0,
        frozen: None,
        push_enabled: None,
        pull_enabled: None,
    })];
    if i % 50 == 3 {
        lines.push(RegistryLine::Destination(DestinationLine {
            destination_id: format!("card-{i:04}"),
            user_id: user_id.into(),
            kind: DestinationKind::Card,
            bank_time_zone: zone.into(),
            daily_limit_cents: DEMO_LIMIT.0,
            frozen: Some(true),
            push_enabled: Some(true),
            pull_enabled: Some(true),
        }));
        lines.push(RegistryLine::AchCredit(AchCreditLine {
            routine_id: format!("rtn-card-{i:04}"),
            ach_credit_id: format!("ach-{i:04}"),
            addenda: format!("demo payout {i:04}"),
        }));
    }
    for l in &lines {
        registry::import(store, l, Utc::now()).await?;
    }
    Ok(())
}

const DEMO_LIMIT: Cents = Cents(250_000);

/// What happens between the mirror and the reprocessing check: the issuer unfreezes half the frozen cards
/// (in its registry and at Astra), a few transfers that landed fail at Astra, and days pass for them.
pub(super) async fn between_jobs(sandbox: &Sandbox, store: &Store, users: usize) -> anyhow::Result<()> {
    for i in (3..users).step_by(100) {
        let card = format!("card-{i:04}");
        sandbox.state().set_card_frozen(&card, false);
        registry::set_frozen(store, &card, false, Utc::now()).await?;
    }
    let failed: Vec<String> = (11..users).step_by(40).map(|i| format!("demo-trf-{i:04}-1")).collect();
    {
        let mut s = sandbox.state();
        for id in &failed {
            s.set_transfer_status(id, TransferStatus::Failed, Some("R01: insufficient funds".into()));
        }
    }
    // Days pass: the landed transfers' next reading by id is due (it comes 1, 2, 3, 5, 8… days after landing),
    // and the card transfers still held have been held four days (past `stuck_after`).
    for id in &failed {
        mirror::set_recheck(store, id, Some(Utc::now() - chrono::TimeDelta::seconds(1))).await?;
    }
    for i in (53..users).step_by(100) {
        mirror::backdate_held(store, &format!("demo-trf-{i:04}-card"), chrono::TimeDelta::days(4)).await?;
    }
    Ok(())
}
