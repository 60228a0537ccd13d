//! Outbox delivery, on both stores: two deliverers at once against a slow endpoint POST each message once
//! (a claim per message, held for its whole POST, fences its completion); a run's pass stops at an endpoint
//! that does not answer, leaving the rest for later.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use astra_worker::outbox::{self, Bound, Deliverer, Message};
use chrono::Utc;
use secrecy::SecretString;

use crate::{
    both_backends,
    helpers::{Backend, TestApp},
};

/// An endpoint answering 200 after `delay`, counting POSTs per idempotency key.
async fn slow_endpoint(delay: Duration) -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    use axum::{Router, http::HeaderMap, routing::post};
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let s = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |h: HeaderMap| {
            let s = s.clone();
            async move {
                let key = h.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                *s.lock().unwrap().entry(key).or_default() += 1;
                tokio::time::sleep(delay).await;
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, seen)
}

async fn two_deliverers_at_once_post_each_message_once(b: Backend) {
    let rig = TestApp::new(b, Default::default(), |_| {}).await;
    let w = rig.worker(None).await;
    for n in 0..20 {
        let m = Message::once(
            "user_suspended",
            &format!("u{n}"),
            Some(&format!("u{n}")),
            serde_json::json!({}),
            Utc::now(),
        );
        outbox::store::insert(&w.store, &m).await.unwrap();
    }
    let (url, seen) = slow_endpoint(Duration::from_millis(50)).await;
    let key = SecretString::from("k".to_string());
    let mk = || Deliverer::new(&rig.settings.outbox, reqwest::Url::parse(&url).unwrap(), key.clone()).unwrap();
    let (a, b2) = (mk(), mk());
    let (sa, sb) = (w.store.clone(), rig.db.store().await);
    let (ra, rb) = tokio::join!(a.deliver_due(&sa, Utc::now()), b2.deliver_due(&sb, Utc::now()));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.delivered + rb.delivered, 20, "{ra:?} {rb:?}");
    assert!(ra.delivered > 0 && rb.delivered > 0, "both deliverers worked: {ra:?} {rb:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    assert!(seen.values().all(|n| *n == 1), "each message POSTed once: {seen:?}");
    assert!(outbox::store::list(&w.store, true, None, 100).await.unwrap().is_empty());
}
both_backends!(two_deliverers_at_once_post_each_message_once, super::two_deliverers_at_once_post_each_message_once);

async fn a_run_stops_delivering_at_an_endpoint_that_does_not_answer(b: Backend) {
    let rig = TestApp::new(b, Default::default(), |_| {}).await;
    let w = rig.worker(None).await;
    for n in 0..5 {
        let m = Message::once("user_suspended", &format!("u{n}"), None, serde_json::json!({}), Utc::now());
        outbox::store::insert(&w.store, &m).await.unwrap();
    }
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let d =
        Deliverer::new(&rig.settings.outbox, reqwest::Url::parse(&dead).unwrap(), SecretString::from("k".to_string()))
            .unwrap();
    let r = d.deliver(&w.store, Utc::now(), Bound::ForARun).await.unwrap();
    assert_eq!((r.delivered, r.failed, r.left), (0, 1, true), "one attempt, then the pass stops");
    assert_eq!(outbox::store::list(&w.store, true, None, 100).await.unwrap().len(), 5, "nothing is lost");
}
both_backends!(
    a_run_stops_delivering_at_an_endpoint_that_does_not_answer,
    super::a_run_stops_delivering_at_an_endpoint_that_does_not_answer
);
