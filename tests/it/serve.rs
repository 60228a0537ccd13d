//! `astra-worker serve`, in process on a loopback port against the sandbox, on both stores: every route of
//! `/openapi.json` is served and every `/v1` route refuses a missing or wrong key; webhook signatures (good,
//! bad, missing, Python's separators, too large); a webhook ten times and out of order has one effect; a
//! `transfer_created` over the day's headroom makes the HTTP guard deny within seconds; `user_updated` to
//! suspended makes the guard say so and no prompt is ever sent; two services on one store process each webhook
//! once, and a read that outlasts its claim is not taken over; the code exchange over HTTP; requests in flight at shutdown finish; a slow client holds no connection.

use std::{sync::Arc, time::Duration};

use astra_worker::{
    app::Worker,
    astra::{TransferStatus, UserStatus},
    inbox::{self, Webhook, process::process_due_claiming, signature},
    reconcile::registry::{self, DestinationKind, DestinationLine, ImportLine},
    sandbox::{Faults, SandboxSettings},
};
use chrono::{TimeDelta, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::{
    astra::add_transfer,
    both_backends,
    helpers::{Backend, TestApp},
    with_pool,
};

const KEY: &str = "test-api-key-0123456789";

/// A running service: its base URL, its worker, and the task serving.
struct Service {
    base: String,
    worker: Arc<Worker>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(rig: &TestApp) -> Service {
    let worker = Arc::new(rig.worker(None).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let w = worker.clone();
    let task = tokio::spawn(astra_worker::serve::serve_on(w, listener, SecretString::from(KEY.to_string())));
    Service { base, worker, task }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn secret() -> SecretString {
    SecretString::from(SandboxSettings::default().client_secret)
}

/// POSTs a webhook signed as Astra signs it.
async fn send_webhook(base: &str, body: &str) -> reqwest::Response {
    http()
        .post(format!("{base}/webhooks/astra"))
        .header("Astra-Verification", signature::sign(&secret(), body.as_bytes()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn webhook(kind: &str, id: &str, user: &str, resource: &str) -> String {
    json!({"webhook_type": kind, "webhook_id": id, "user_id": user, "resource_id": resource}).to_string()
}

async fn guard(base: &str, body: Value) -> Value {
    let r = http().post(format!("{base}/v1/guard")).bearer_auth(KEY).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "the guard answers 200 for allowed and denied alike");
    r.json().await.unwrap()
}

/// Waits (bounded) until `f` holds; the inbox is processed in the background.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(tokio::time::Instant::now() < give_up, "never happened within 15 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(w: &Worker, sql: &'static str) -> i64 {
    with_pool!(&w.store, |p| sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await.unwrap())
}

async fn register(w: &Worker, dest: &str, user: &str, limit: i64) {
    register_kind(w, dest, user, limit, DestinationKind::Account).await
}

async fn register_kind(w: &Worker, dest: &str, user: &str, limit: i64, kind: DestinationKind) {
    let line = ImportLine::Destination(DestinationLine {
        destination_id: dest.into(),
        user_id: user.into(),
        kind,
        bank_time_zone: "America/New_York".into(),
        daily_limit_cents: limit,
        frozen: None,
        push_enabled: None,
        pull_enabled: None,
    });
    registry::import(&w.store, &line, Utc::now()).await.unwrap();
}

async fn every_documented_route_is_served_and_every_v1_route_needs_the_key(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let svc = start(&rig).await;
    let doc: Value = http().get(format!("{}/openapi.json", svc.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "{doc}");
    let mut v1 = 0;
    for (path, ops) in paths {
        let url = format!("{}{}", svc.base, path.replace("{key}", "k1").replace("{user_id}", "u1"));
        for (method, op) in ops.as_object().unwrap() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let bare = http().request(m.clone(), &url).send().await.unwrap();
            assert_ne!(bare.status(), 404, "{method} {path} is documented but not served");
            assert!(bare.headers().contains_key("x-request-id"), "{method} {path} answers with a request id");
            let authed = op.get("security").is_some();
            assert_eq!(authed, path.starts_with("/v1/"), "{method} {path}: /v1 and only /v1 needs the key");
            if authed {
                v1 += 1;
                assert_eq!(bare.status(), 401, "{method} {path} without a key");
                let wrong = http().request(m, &url).bearer_auth("wrong-key-0123456789000").send().await.unwrap();
                assert_eq!(wrong.status(), 401, "{method} {path} with a wrong key");
            }
        }
    }
    assert_eq!(v1, 6);
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http().get(format!("{}{probe}", svc.base)).send().await.unwrap().status(), 200, "{probe}");
    }
    let metrics = http().get(format!("{}/metrics", svc.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("astra_worker_webhook_inbox_depth 0"), "{metrics}");
    assert!(metrics.contains("astra_worker_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}"));
    let bad = http().post(format!("{}/v1/guard", svc.base)).bearer_auth(KEY).body(r#"{"user_id": 5}"#).send().await;
    let bad = bad.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("user_id"), "a malformed body names the field");
    svc.worker.shutdown.trigger("test");
    svc.task.await.unwrap().unwrap();
}
both_backends!(
    every_documented_route_is_served_and_every_v1_route_needs_the_key,
    super::every_documented_route_is_served_and_every_v1_route_needs_the_key
);

async fn webhook_signatures_are_checked_before_anything_is_stored(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let svc = start(&rig).await;
    let body = webhook("card_updated", "w-sig", "u-none", "card-none");
    let url = format!("{}/webhooks/astra", svc.base);
    let bad = http().post(&url).header("Astra-Verification", "AAAA").body(body.clone()).send().await.unwrap();
    assert_eq!(bad.status(), 401);
    let missing = http().post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let other = signature::sign(&SecretString::from("not-the-secret".to_string()), body.as_bytes());
    let wrong = http().post(&url).header("Astra-Verification", other).body(body.clone()).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(count(&svc.worker, "SELECT COUNT(*) FROM webhook_inbox").await, 0, "nothing stored");
    // Signed over Python's `json.dumps` of the body (", " and ": "), sent compact.
    let python = signature::python_dumps(body.as_bytes()).unwrap();
    assert!(python.contains("\", \""));
    let ok = http()
        .post(&url)
        .header("Astra-Verification", signature::sign(&secret(), python.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(send_webhook(&svc.base, &body).await.status(), 200);
    let big = format!("{{\"webhook_type\":\"x\",\"webhook_id\":\"big\",\"pad\":\"{}\"}}", "a".repeat(2 << 20));
    let refused = http()
        .post(&url)
        .header("Astra-Verification", signature::sign(&secret(), big.as_bytes()))
        .body(big)
        .send()
        .await;
    // 413, or the connection closed by the service while the body was still being sent.
    assert!(refused.as_ref().is_err() || refused.as_ref().is_ok_and(|r| r.status() == 413), "{refused:?}");
    assert_eq!(count(&svc.worker, "SELECT COUNT(*) FROM webhook_inbox").await, 1);
    assert_eq!(count(&svc.worker, "SELECT CAST(MAX(deliveries) AS BIGINT) FROM webhook_inbox").await, 2);
    svc.worker.shutdown.trigger("test");
    svc.task.await.unwrap().unwrap();
}
both_backends!(
    webhook_signatures_are_checked_before_anything_is_stored,
    super::webhook_signatures_are_checked_before_anything_is_stored
);

async fn transfer_webhooks_move_the_guard_within_seconds_once_however_often_they_come(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let svc = start(&rig).await;
    let u = rig.seed(&svc.worker.store, 1, |_| TimeDelta::days(1)).await.remove(0);
    register(&svc.worker, "dst", &u, 250_000).await;
    let ask = json!({"user_id": u, "amount_cents": 100_000, "destination_id": "dst"});
    assert_eq!(guard(&svc.base, ask.clone()).await["allowed"], true);

    // Astra shows a $2,000 transfer; its webhooks arrive ten times, `transfer_updated` before `transfer_created`.
    add_transfer(&mut rig.sandbox.state(), "t-1", &u, 200_000, Utc::now(), TransferStatus::Processed, None);
    for i in 0..10 {
        let (kind, id) = if i % 2 == 0 { ("transfer_updated", "w-upd") } else { ("transfer_created", "w-new") };
        assert_eq!(send_webhook(&svc.base, &webhook(kind, id, &u, "t-1")).await.status(), 200);
    }
    eventually("the guard denies once the transfer is counted", async || {
        guard(&svc.base, ask.clone()).await["reason"] == "daily_limit"
    })
    .await;
    let a = guard(&svc.base, ask.clone()).await;
    assert_eq!(a["day_total_cents"], 200_000, "counted once: {a}");
    eventually("both webhooks processed", async || {
        count(&svc.worker, "SELECT COUNT(*) FROM webhook_inbox WHERE processed_at IS NOT NULL").await == 2
    })
    .await;
    let reads = rig.sandbox.state().calls.iter().filter(|c| c.path == "/v1/transfers/t-1").count();
    assert_eq!(reads, 2, "one read per webhook_id, not per delivery");
    assert_eq!(count(&svc.worker, "SELECT CAST(SUM(deliveries) AS BIGINT) FROM webhook_inbox").await, 10);
    svc.worker.shutdown.trigger("test");
    svc.task.await.unwrap().unwrap();
}
both_backends!(
    transfer_webhooks_move_the_guard_within_seconds_once_however_often_they_come,
    super::transfer_webhooks_move_the_guard_within_seconds_once_however_often_they_come
);

async fn a_user_suspended_by_webhook_is_denied_and_never_prompted(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let svc = start(&rig).await;
    let u = rig.seed(&svc.worker.store, 1, |_| TimeDelta::days(1)).await.remove(0);
    register(&svc.worker, "dst", &u, 250_000).await;
    rig.sandbox.state().set_user_status(&u, UserStatus::Suspended);
    assert_eq!(send_webhook(&svc.base, &webhook("user_updated", "w-u", &u, &u)).await.status(), 200);
    let ask = json!({"user_id": u, "amount_cents": 100, "destination_id": "dst"});
    eventually("the guard says user_suspended", async || {
        guard(&svc.base, ask.clone()).await["reason"] == "user_suspended"
    })
    .await;
    // The grant then dies: still no prompt, only the one follow-up.
    rig.sandbox.state().revoke_grant(&u);
    let svc_tokens = svc.worker.services().unwrap();
    let now = Utc::now();
    assert!(
        astra_worker::tokens::store::try_lease(&svc.worker.store, &u, "t", now + TimeDelta::minutes(1), now)
            .await
            .unwrap()
    );
    astra_worker::tokens::refresh_leased(&svc.worker.store, &svc_tokens.tokens, Default::default(), &u, "t", None)
        .await
        .unwrap();
    assert_eq!(count(&svc.worker, "SELECT COUNT(*) FROM outbox WHERE kind = 'reauthorization_prompt'").await, 0);
    assert_eq!(count(&svc.worker, "SELECT COUNT(*) FROM outbox WHERE kind = 'user_suspended'").await, 1);
    svc.worker.shutdown.trigger("test");
    svc.task.await.unwrap().unwrap();
}
both_backends!(
    a_user_suspended_by_webhook_is_denied_and_never_prompted,
    super::a_user_suspended_by_webhook_is_denied_and_never_prompted
);

async fn two_services_on_one_store_process_each_webhook_once(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    rig.sandbox.set_faults(Faults { latency_ms: 30, ..Default::default() });
    let (one, two) = (start(&rig).await, start(&rig).await);
    let users = rig.seed(&one.worker.store, 5, |_| TimeDelta::days(1)).await;
    for (i, u) in users.iter().enumerate() {
        register(&one.worker, &format!("dst-{i}"), u, 250_000).await;
    }
    let mut expected = 0;
    for n in 0..40 {
        let u = &users[n % users.len()];
        let t = format!("t-{n}");
        add_transfer(&mut rig.sandbox.state(), &t, u, 1_000, Utc::now(), TransferStatus::Processed, None);
        let body = webhook("transfer_created", &format!("w-{n}"), u, &t);
        // Each webhook to both services, as a retrying Astra behind a load balancer would.
        assert_eq!(send_webhook(&one.base, &body).await.status(), 200);
        assert_eq!(send_webhook(&two.base, &body).await.status(), 200);
        expected += 1;
    }
    eventually("every webhook processed", async || {
        count(&one.worker, "SELECT COUNT(*) FROM webhook_inbox WHERE processed_at IS NOT NULL").await == expected
    })
    .await;
    let reads = rig.sandbox.state().calls.iter().filter(|c| c.path.starts_with("/v1/transfers/t-")).count();
    assert_eq!(reads as i64, expected, "each webhook was processed by one service, once");
    assert_eq!(count(&one.worker, "SELECT COUNT(*) FROM transfer").await, expected);
    for s in [one, two] {
        s.worker.shutdown.trigger("test");
        s.task.await.unwrap().unwrap();
    }
}
both_backends!(
    two_services_on_one_store_process_each_webhook_once,
    super::two_services_on_one_store_process_each_webhook_once
);

/// A processor's claim on the webhooks it is processing is renewed while their reads take longer than the claim
/// lasts: a second processor polling meanwhile takes nothing, and the transfer is read once.
async fn a_webhook_whose_read_outlasts_its_claim_is_not_taken_over(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| s.astra.request_timeout = Duration::from_secs(5)).await;
    let (first, second) = (Arc::new(rig.worker(None).await), rig.worker(None).await);
    let u = rig.seed(&first.store, 1, |_| TimeDelta::days(1)).await.remove(0);
    add_transfer(&mut rig.sandbox.state(), "t-1", &u, 1_000, Utc::now(), TransferStatus::Processed, None);
    let hook = Webhook::parse(webhook("transfer_created", "w-1", &u, "t-1").as_bytes()).unwrap();
    assert!(inbox::store::accept(&first.store, &hook, "{}", Utc::now()).await.unwrap());
    // Each of Astra's answers takes 1.5 s (within the client's timeout); a claim lasts 200 ms unless renewed.
    rig.sandbox.set_faults(Faults { latency_ms: 1_500, ..Default::default() });
    let claim = TimeDelta::milliseconds(200);
    let processing = {
        let first = first.clone();
        tokio::spawn(async move { process_due_claiming(&first, "first", claim).await })
    };
    eventually("the first claims the webhook", async || {
        count(&second, "SELECT COUNT(*) FROM webhook_inbox WHERE claimed_by = 'first'").await == 1
    })
    .await;
    let mut polls = 0;
    while !processing.is_finished() {
        let p = process_due_claiming(&second, "second", claim).await.unwrap();
        assert_eq!(p.processed + p.ignored + p.retried + p.failed, 0, "the second took a claimed webhook: {p:?}");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = processing.await.unwrap().unwrap();
    assert_eq!(p.processed, 1, "{p:?}");
    assert!(polls >= 10, "the second polled while the first read, past its unrenewed claim ({polls} polls)");
    let reads = rig.sandbox.state().calls.iter().filter(|c| c.path == "/v1/transfers/t-1").count();
    assert_eq!(reads, 1, "read once");
    assert_eq!(count(&first, "SELECT COUNT(*) FROM transfer").await, 1);
}
both_backends!(
    a_webhook_whose_read_outlasts_its_claim_is_not_taken_over,
    super::a_webhook_whose_read_outlasts_its_claim_is_not_taken_over
);

/// Two reads of one card's flags recorded out of order (two `card_updated` webhooks processed at once, in two
/// services): the read begun later stands, whichever is recorded last; a card nobody registered is said so.
async fn a_card_flags_read_earlier_does_not_overwrite_one_read_later(b: Backend) {
    use registry::CardFlags;
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let w = rig.worker(None).await;
    register_kind(&w, "card-1", "u1", 250_000, DestinationKind::Card).await;
    let push = async || registry::destination(&w.store, "card-1").await.unwrap().unwrap().push_enabled;
    let t = Utc::now();
    let set = |push: bool, at| registry::set_card_flags(&w.store, "card-1", Some(push), None, at);
    assert_eq!(set(false, t).await.unwrap(), CardFlags::Recorded);
    assert_eq!(set(true, t - TimeDelta::seconds(1)).await.unwrap(), CardFlags::Superseded);
    assert_eq!(push().await, Some(false), "the earlier read, recorded last, is not kept");
    assert_eq!(set(true, t + TimeDelta::seconds(1)).await.unwrap(), CardFlags::Recorded);
    assert_eq!(push().await, Some(true), "a later read is");
    let unknown = registry::set_card_flags(&w.store, "card-x", Some(true), None, t).await.unwrap();
    assert_eq!(unknown, CardFlags::NotRegistered);
}
both_backends!(
    a_card_flags_read_earlier_does_not_overwrite_one_read_later,
    super::a_card_flags_read_earlier_does_not_overwrite_one_read_later
);

async fn the_code_exchange_and_tokens_over_http(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let svc = start(&rig).await;
    let u = rig.seed(&svc.worker.store, 1, |_| TimeDelta::days(1)).await.remove(0);
    let code = rig.sandbox.state().mint_code(&u).unwrap();
    let url = format!("{}/v1/grants/exchange", svc.base);
    let ok = http().post(&url).bearer_auth(KEY).json(&json!({"user_id": u, "code": code})).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["grant"], "replaced");
    assert!(!body.to_string().contains(&code), "no secret is echoed");
    let again = http().post(&url).bearer_auth(KEY).json(&json!({"user_id": u, "code": code})).send().await.unwrap();
    assert_eq!(again.status(), 400, "a code works once");
    let unknown = http().post(&url).bearer_auth(KEY).json(&json!({"user_id": u, "code": "code_nope"})).send().await;
    assert_eq!(unknown.unwrap().status(), 400);
    let t: Value = http()
        .get(format!("{}/v1/users/{u}/access-token", svc.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["access_token"], rig.sandbox.state().grant_info(&u).unwrap().access_token);
    assert!(t["expires_at"].is_string());
    let none = http().get(format!("{}/v1/users/nobody/access-token", svc.base)).bearer_auth(KEY).send().await;
    assert_eq!(none.unwrap().status(), 404);
    svc.worker.shutdown.trigger("test");
    svc.task.await.unwrap().unwrap();
}
both_backends!(the_code_exchange_and_tokens_over_http, super::the_code_exchange_and_tokens_over_http);

/// A service, and a request for the access token of a user whose stored one is about to expire, in flight: its
/// refresh intent is written and Astra (answering in `latency_ms`) has not answered. Gives the request and the user.
async fn refresh_in_flight(
    b: Backend,
    latency_ms: u64,
) -> (TestApp, Service, tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>, String) {
    let rig = TestApp::new(b, SandboxSettings::default(), |s| s.astra.request_timeout = Duration::from_secs(10)).await;
    let svc = start(&rig).await;
    let u = rig.seed(&svc.worker.store, 1, |_| TimeDelta::days(1)).await.remove(0);
    with_pool!(&svc.worker.store, |p| sqlx::query("UPDATE grant_token SET access_expires_at = $1")
        .bind(Utc::now())
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    rig.sandbox.set_faults(Faults { latency_ms, ..Default::default() });
    let url = format!("{}/v1/users/{u}/access-token", svc.base);
    let request = tokio::spawn(async move { http().get(url).bearer_auth(KEY).send().await });
    eventually("the refresh is in flight", async || {
        count(&svc.worker, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await == 1
    })
    .await;
    (rig, svc, request, u)
}

async fn requests_in_flight_at_shutdown_finish(b: Backend) {
    let (_rig, svc, request, _) = refresh_in_flight(b, 1_000).await;
    svc.worker.shutdown.trigger("SIGTERM");
    let answer = request.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200, "the request in flight finished");
    svc.task.await.unwrap().unwrap();
    assert!(http().get(format!("{}/healthz", svc.base)).send().await.is_err(), "no longer accepting");
}
both_backends!(requests_in_flight_at_shutdown_finish, super::requests_in_flight_at_shutdown_finish);

/// A caller closes the connection while the refresh it asked for waits on Astra (answering in 2 s); then
/// `shutdown` at once, or not.
async fn abandon_a_refresh(b: Backend, shutdown: bool) {
    let (rig, svc, request, u) = refresh_in_flight(b, 2_000).await;
    // The backend's own timeout: it closes the connection while Astra has not answered.
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    if !shutdown {
        eventually("the refresh is committed", async || {
            count(&svc.worker, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await == 0
        })
        .await;
    }
    svc.worker.shutdown.trigger("SIGTERM");
    svc.task.await.unwrap().unwrap();
    assert_eq!(count(&svc.worker, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await, 0);
    assert_eq!(rig.refreshes(&u), 1);
    assert!(rig.stored_is_live(&svc.worker.store, &u).await, "the pair Astra issued is the one stored");
    assert_eq!(count(&svc.worker, "SELECT COUNT(*) FROM reauth_episode").await, 0, "no episode: the grant lives");
}

async fn a_caller_that_gives_up_during_a_refresh_leaves_the_grant_live(b: Backend) {
    abandon_a_refresh(b, false).await;
}
both_backends!(
    a_caller_that_gives_up_during_a_refresh_leaves_the_grant_live,
    super::a_caller_that_gives_up_during_a_refresh_leaves_the_grant_live
);

/// Shutdown waits for the refresh whose caller left, within the grace period.
async fn shutdown_finishes_a_refresh_whose_caller_gave_up(b: Backend) {
    abandon_a_refresh(b, true).await;
}
both_backends!(
    shutdown_finishes_a_refresh_whose_caller_gave_up,
    super::shutdown_finishes_a_refresh_whose_caller_gave_up
);

async fn webhooks_the_sandbox_sends_late_repeated_and_out_of_order_count_each_transfer_once(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let svc = start(&rig).await;
    let users = rig.seed(&svc.worker.store, 3, |_| TimeDelta::days(1)).await;
    for (i, u) in users.iter().enumerate() {
        register(&svc.worker, &format!("dst-{i}"), u, 1_000_000).await;
    }
    {
        let mut s = rig.sandbox.state();
        s.settings.webhook_url = Some(format!("{}/webhooks/astra", svc.base));
        s.settings.faults.webhook_duplicates = 3;
        s.settings.faults.webhook_delay_ms = 300;
    }
    // Twelve transfers, and each then fails after landing: a created and an updated webhook per transfer, four
    // copies of each, in any order.
    let mut total = 0;
    for n in 0..12 {
        let (u, d) = (&users[n % 3], format!("dst-{}", n % 3));
        let id = format!("t-{n}");
        let t = astra_worker::sandbox::TransferRec {
            destination_id: Some(d),
            ..crate::astra::transfer_rec(&id, u, 1_000 + n as i64, Utc::now(), TransferStatus::Processed)
        };
        rig.sandbox.state().add_transfer(t);
        total += 1_000 + n as i64;
    }
    eventually("every transfer counted", async || {
        count(&svc.worker, "SELECT CAST(COALESCE(SUM(total_cents), 0) AS BIGINT) FROM inbound_day").await == total
    })
    .await;
    for n in 0..12 {
        rig.sandbox.state().set_transfer_status(&format!("t-{n}"), TransferStatus::Failed, Some("R01".into()));
    }
    eventually("every failure after landing followed up", async || {
        count(&svc.worker, "SELECT COUNT(*) FROM outbox WHERE kind = 'remove_from_available_balance'").await == 12
    })
    .await;
    eventually("the inbox drained", async || {
        count(&svc.worker, "SELECT COUNT(*) FROM webhook_inbox WHERE processed_at IS NULL").await == 0
    })
    .await;
    assert_eq!(count(&svc.worker, "SELECT COUNT(*) FROM webhook_inbox").await, 24, "one row per webhook_id");
    assert_eq!(
        count(&svc.worker, "SELECT COUNT(*) FROM outbox WHERE kind = 'remove_from_available_balance'").await,
        12
    );
    assert_eq!(count(&svc.worker, "SELECT COUNT(*) FROM transfer WHERE status = 'failed'").await, 12);
    svc.worker.shutdown.trigger("test");
    svc.task.await.unwrap().unwrap();
}
both_backends!(
    webhooks_the_sandbox_sends_late_repeated_and_out_of_order_count_each_transfer_once,
    super::webhooks_the_sandbox_sends_late_repeated_and_out_of_order_count_each_transfer_once
);

/// Reads what the service sends on `conn` until it closes it (bounded: 15 s, far past the 1 s timeouts).
async fn until_closed(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), conn.read_to_end(&mut got))
        .await
        .expect("the service closed the connection within 15 s")
        .ok();
    String::from_utf8_lossy(&got).into_owned()
}

/// A client that sends a request's head slowly, or its body, holds neither its connection nor a handler past
/// `[service]`'s timeouts (1 s here): the connection is closed, the body answered 408; others are served.
async fn a_slow_client_holds_no_connection_past_the_timeouts(b: Backend) {
    use tokio::io::AsyncWriteExt as _;
    let rig = TestApp::new(b, SandboxSettings::default(), |s| {
        s.service.header_timeout = Duration::from_secs(1);
        s.service.body_timeout = Duration::from_secs(1);
    })
    .await;
    let svc = start(&rig).await;
    let addr = svc.base.trim_start_matches("http://").to_string();

    // Half a head, then nothing: closed without an answer.
    let mut head = tokio::net::TcpStream::connect(&addr).await.unwrap();
    head.write_all(b"POST /v1/guard HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // An idle connection that never sends a request: closed too.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A kept-alive connection, idle after its answer: closed too.
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    // The whole head, a tenth of the body, then nothing: 408, with its request id.
    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /v1/guard HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\nx-request-id: slow-body-1\r\n\r\n{{\"user_id\":"
    );
    body.write_all(req.as_bytes()).await.unwrap();

    assert_eq!(until_closed(&mut head).await, "", "a head that never completes gets no answer");
    assert_eq!(until_closed(&mut idle).await, "", "an idle connection is closed");
    let answered = until_closed(&mut kept).await;
    assert!(answered.starts_with("HTTP/1.1 200") && !answered.contains("connection: close"), "{answered}");
    let answer = until_closed(&mut body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "the answer names the setting: {answer}");
    assert!(answer.to_ascii_lowercase().contains("x-request-id: slow-body-1"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");

    // Meanwhile and after, others are served as before.
    let ok = http().get(format!("{}/healthz", svc.base)).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    svc.worker.shutdown.trigger("SIGTERM");
    svc.task.await.unwrap().unwrap();
}
both_backends!(
    a_slow_client_holds_no_connection_past_the_timeouts,
    super::a_slow_client_holds_no_connection_past_the_timeouts
);

/// A hold over HTTP: placed by `POST /v1/guard` with a key, attached to its routine (again, even after the
/// hold ended: the same answer), refused 409 where the answer is no (the routine is another open hold's;
/// another routine for a released hold), 404 for a key that holds nothing; a released hold reserves nothing.
async fn a_hold_is_placed_attached_and_released_over_http(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let svc = start(&rig).await;
    let u = rig.seed(&svc.worker.store, 1, |_| TimeDelta::days(1)).await.remove(0);
    register(&svc.worker, "dst", &u, 250_000).await;
    let ask = |amount: i64, key: &str| json!({"user_id": u, "amount_cents": amount, "destination_id": "dst", "hold_key": key});
    assert_eq!(guard(&svc.base, ask(200_000, "h-1")).await["allowed"], true);
    assert_eq!(guard(&svc.base, ask(40_000, "h-2")).await["allowed"], true);
    let v = guard(&svc.base, ask(20_000, "h-3")).await;
    assert_eq!((v["allowed"].as_bool(), v["headroom_cents"].as_i64()), (Some(false), Some(10_000)), "{v}");

    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let r = http().request(method, format!("{}{path}", svc.base)).bearer_auth(KEY);
        let r = match body {
            Some(b) => r.json(&b),
            None => r,
        };
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let attach = |key: &str, routine: &str| {
        call(reqwest::Method::POST, format!("/v1/holds/{key}/attach"), Some(json!({"routine_id": routine})))
    };
    let (status, v) = attach("h-1", "rt-1").await;
    assert_eq!((status, v["attached"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(attach("h-1", "rt-1").await.0, 200, "the same attach again");
    let (status, v) = attach("h-2", "rt-1").await;
    assert!(status == 409 && v["error"].as_str().is_some_and(|e| e.contains("another hold")), "{status} {v}");
    assert_eq!(attach("nothing-here", "rt-2").await.0, 404);

    let (status, v) = call(reqwest::Method::DELETE, "/v1/holds/h-1".into(), None).await;
    assert_eq!((status, v["released"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(call(reqwest::Method::DELETE, "/v1/holds/h-1".into(), None).await.0, 404, "released already");
    let (status, v) = attach("h-1", "rt-5").await;
    assert!(status == 409 && v["error"].as_str().is_some_and(|e| e.contains("has ended (released)")), "{status} {v}");
    assert_eq!(attach("h-1", "rt-1").await.0, 200, "its own attach again (a retry): done already");
    // What h-1 reserved is free again: 250,000 − 40,000 held by h-2.
    let v = guard(&svc.base, ask(20_000, "h-3")).await;
    assert_eq!((v["allowed"].as_bool(), v["headroom_cents"].as_i64()), (Some(true), Some(190_000)), "{v}");
    svc.worker.shutdown.trigger("SIGTERM");
    svc.task.await.unwrap().unwrap();
}
both_backends!(
    a_hold_is_placed_attached_and_released_over_http,
    super::a_hold_is_placed_attached_and_released_over_http
);

/// A body that is not one JSON object (an array read by position, a second object after the first) and an id
/// holding a NUL (which PostgreSQL refuses) are 400s naming the problem, and nothing is stored.
async fn bodies_not_one_object_and_ids_holding_a_nul_are_refused(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let svc = start(&rig).await;
    let post = |path: &str, body: &str| {
        http().post(format!("{}{path}", svc.base)).bearer_auth(KEY).body(body.to_string()).send()
    };
    let cases = [
        ("/v1/guard", r#"["u1",100,"acct-1","arrkey","2h"]"#, "expected one object"),
        (
            "/v1/guard",
            r#"{"user_id":"u1","amount_cents":100}{"user_id":"u2","amount_cents":100}"#,
            "more than one object",
        ),
        (
            "/v1/guard",
            r#"{"user_id":"u\u0000","amount_cents":100,"hold_key":"k1"}"#,
            "user_id contains a control character",
        ),
        ("/v1/holds/k1/attach", r#"["rt_1"]"#, "expected one object"),
        ("/v1/holds/a%00b/attach", r#"{"routine_id":"rt_1"}"#, "control character"),
        ("/v1/holds/k1/attach", r#"{"routine_id":""}"#, "routine_id is empty"),
        ("/v1/guard", r#"{"user_id":"u1","amount_cents":100,"destination_id":""}"#, "destination_id is empty"),
    ];
    for (path, body, says) in cases {
        let r = post(path, body).await.unwrap();
        assert_eq!(r.status(), 400, "{path} {body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(says), "{path} {body}: {text}");
    }
    // axum's own refusals are JSON too: a path that is not UTF-8 (a body over the limit: `serve::http`'s test).
    let r = post("/v1/holds/%FF/attach", r#"{"routine_id":"rt_1"}"#).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("a JSON answer");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("UTF-8")), "{v}");
    // A method the route does not take: axum's 405 has no body at all; it says which methods it takes.
    let r = http().get(format!("{}/v1/guard", svc.base)).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let v: Value = r.json().await.expect("a JSON answer");
    assert_eq!(v["error"], "Method Not Allowed", "{v}");
    for r in [
        http().get(format!("{}/v1/users/a%00b/access-token", svc.base)).bearer_auth(KEY).send().await.unwrap(),
        http().delete(format!("{}/v1/holds/a%00b", svc.base)).bearer_auth(KEY).send().await.unwrap(),
    ] {
        assert_eq!(r.status(), 400);
    }
    assert_eq!(count(&svc.worker, "SELECT COUNT(*) FROM guard_hold").await, 0, "no hold was placed");
    // The scheme's name is case-insensitive: a lower-case `bearer` is let in (404: no such user).
    let r = http()
        .get(format!("{}/v1/users/nobody/access-token", svc.base))
        .header("Authorization", format!("bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    svc.worker.shutdown.trigger("SIGTERM");
    svc.task.await.unwrap().unwrap();
}
both_backends!(
    bodies_not_one_object_and_ids_holding_a_nul_are_refused,
    super::bodies_not_one_object_and_ids_holding_a_nul_are_refused
);
