//! `astra-worker serve` as real processes, on both stores: two services on one store process each webhook once;
//! SIGTERM lets a request in flight finish, then the process exits 0.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use astra_worker::{
    astra::TransferStatus,
    inbox::signature,
    sandbox::{Faults, SandboxSettings},
};
use chrono::{TimeDelta, Utc};
use secrecy::SecretString;

use crate::{
    astra::add_transfer,
    both_backends,
    helpers::{Backend, KEY_A, TestApp, b64, bin},
    with_pool,
};

const KEY: &str = "process-api-key-0123456789";

/// A `serve` process on a free port: the child, its base URL, and a thread draining its log.
fn spawn(rig: &TestApp) -> (Child, String) {
    let mut child = bin(&rig.db.url)
        .env("ASTRA_BASE_URL", rig.sandbox.base_url())
        .env("ASTRA_CLIENT_ID", "sandbox-client")
        .env("ASTRA_CLIENT_SECRET", "sandbox-secret")
        .env("ASTRA_WORKER_TOKEN_KEY", b64(&KEY_A))
        .env("ASTRA_WORKER_API_KEY", KEY)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let base = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "serve exited before listening");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "serving"
        {
            break format!("http://{}", v["listen"].as_str().unwrap());
        }
    };
    std::thread::spawn(move || for _ in out.lines() {});
    (child, base)
}

async fn count(rig: &TestApp, sql: &'static str) -> i64 {
    let store = rig.db.store().await;
    let n = with_pool!(&store, |p| sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await.unwrap());
    store.close().await;
    n
}

async fn two_serve_processes_on_one_store_process_each_webhook_once(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let store = rig.db.store().await;
    let users = rig.seed(&store, 4, |_| TimeDelta::days(1)).await;
    store.close().await;
    let ((mut a, base_a), (mut b2, base_b)) = (spawn(&rig), spawn(&rig));
    let http = reqwest::Client::new();
    let secret = SecretString::from("sandbox-secret".to_string());
    for n in 0..30 {
        let u = &users[n % users.len()];
        let t = format!("t-{n}");
        add_transfer(&mut rig.sandbox.state(), &t, u, 1_000, Utc::now(), TransferStatus::Processed, None);
        let body = serde_json::json!({"webhook_type": "transfer_created", "webhook_id": format!("w-{n}"),
                                      "user_id": u, "resource_id": t})
        .to_string();
        for base in [&base_a, &base_b] {
            let r = http
                .post(format!("{base}/webhooks/astra"))
                .header("Astra-Verification", signature::sign(&secret, body.as_bytes()))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(&rig, "SELECT COUNT(*) FROM webhook_inbox WHERE processed_at IS NOT NULL").await < 30 {
        assert!(tokio::time::Instant::now() < give_up, "the webhooks were not all processed within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reads = rig.sandbox.state().calls.iter().filter(|c| c.path.starts_with("/v1/transfers/t-")).count();
    assert_eq!(reads, 30, "each webhook was read once, by one of the two processes");
    assert_eq!(count(&rig, "SELECT COUNT(*) FROM transfer").await, 30);
    for c in [&mut a, &mut b2] {
        assert!(Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap().success());
        assert_eq!(c.wait().unwrap().code(), Some(0), "SIGTERM: a clean stop");
    }
}
both_backends!(
    two_serve_processes_on_one_store_process_each_webhook_once,
    super::two_serve_processes_on_one_store_process_each_webhook_once
);

async fn sigterm_lets_a_request_in_flight_finish(b: Backend) {
    let rig = TestApp::new(b, SandboxSettings::default(), |_| {}).await;
    let store = rig.db.store().await;
    let u = rig.seed(&store, 1, |_| TimeDelta::days(1)).await.remove(0);
    // The stored access token is expiring: the request refreshes it against an Astra answering in 1.5 s.
    with_pool!(&store, |p| sqlx::query("UPDATE grant_token SET access_expires_at = $1")
        .bind(Utc::now())
        .execute(p)
        .await
        .map(|_| ())
        .unwrap());
    store.close().await;
    rig.sandbox.set_faults(Faults { latency_ms: 1_500, ..Default::default() });
    let (mut child, base) = spawn(&rig);
    let url = format!("{base}/v1/users/{u}/access-token");
    let request = tokio::spawn(async move { reqwest::Client::new().get(url).bearer_auth(KEY).send().await });
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&rig, "SELECT COUNT(*) FROM refresh_intent WHERE closed_at IS NULL").await == 0 {
        assert!(tokio::time::Instant::now() < give_up, "the refresh never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let answer = request.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200, "the request in flight finished after SIGTERM");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["access_token"], rig.sandbox.state().grant_info(&u).unwrap().access_token);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
both_backends!(sigterm_lets_a_request_in_flight_finish, super::sigterm_lets_a_request_in_flight_finish);
