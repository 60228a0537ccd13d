//! Outbox delivery, on both stores: two deliverers at once against a slow endpoint POST each message once
//! (a claim per message, held for its whole POST, fences its completion); a run's pass stops at an endpoint
//! that does not answer, leaving the rest for later, and every pass leaves a dead endpoint alone for a
//! back-off; a redirect is not followed.

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
    helpers::{Backend, TestApp, serve_on_loopback},
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
    let url = format!("{}/hook", serve_on_loopback(app).await);
    (url, seen)
}

/// A deliverer to `url` with the rig's outbox settings.
fn deliverer(rig: &TestApp, url: &str) -> Deliverer {
    Deliverer::new(&rig.settings.outbox, reqwest::Url::parse(url).unwrap(), SecretString::from("k".to_string()))
        .unwrap()
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
    let mk = || deliverer(&rig, &url);
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
    let d = deliverer(&rig, &dead);
    let r = d.deliver(&w.store, Utc::now(), Bound::ForARun).await.unwrap();
    assert_eq!((r.delivered, r.failed, r.left), (0, 1, true), "one attempt, then the pass stops");
    assert_eq!(outbox::store::list(&w.store, true, None, 100).await.unwrap().len(), 5, "nothing is lost");
}
both_backends!(
    a_run_stops_delivering_at_an_endpoint_that_does_not_answer,
    super::a_run_stops_delivering_at_an_endpoint_that_does_not_answer
);

/// An endpoint that redirects is not followed: the POST would turn into a GET without its body, whose 200 would
/// mark a message delivered that never was. The message stays due, its error naming the redirect.
async fn a_redirecting_endpoint_delivers_nothing_and_keeps_the_message(b: Backend) {
    use axum::{
        Router,
        response::Redirect,
        routing::{get, post},
    };
    let rig = TestApp::new(b, Default::default(), |_| {}).await;
    let w = rig.worker(None).await;
    let m = Message::once("user_suspended", "u1", None, serde_json::json!({}), Utc::now());
    outbox::store::insert(&w.store, &m).await.unwrap();
    let landed: Arc<Mutex<usize>> = Arc::default();
    let l2 = landed.clone();
    let app = Router::new().route("/hook", post(|| async { Redirect::to("/landing") })).route(
        "/landing",
        get(move || {
            let l2 = l2.clone();
            async move {
                *l2.lock().unwrap() += 1;
                "ok"
            }
        }),
    );
    let url = format!("{}/hook", serve_on_loopback(app).await);
    let d = deliverer(&rig, &url);
    let r = d.deliver(&w.store, Utc::now(), Bound::ForARun).await.unwrap();
    assert_eq!((r.delivered, r.failed), (0, 1), "{r:?}");
    assert_eq!(*landed.lock().unwrap(), 0, "the redirect was not followed");
    let pending = outbox::store::list(&w.store, true, None, 100).await.unwrap();
    assert_eq!(pending.len(), 1, "the message is still due");
    let error = pending[0].last_error.as_deref().unwrap_or_default();
    assert!(error.contains("redirect, not followed"), "{error}");
}
both_backends!(
    a_redirecting_endpoint_delivers_nothing_and_keeps_the_message,
    super::a_redirecting_endpoint_delivers_nothing_and_keeps_the_message
);

/// An endpoint that stopped answering is left alone by every pass, in every process, for a back-off: a run
/// within it tries nothing (a dead endpoint costs one timeout per back-off, not one per job run); one after it
/// tries again, and the back-off doubles; once the endpoint answers, everything due is delivered and the mark
/// is gone.
async fn a_dead_endpoint_costs_one_timeout_per_back_off_not_one_per_run(b: Backend) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use axum::{Router, routing::post};
    use chrono::TimeDelta;
    let rig = TestApp::new(b, Default::default(), |s| s.outbox.request_timeout = Duration::from_secs(1)).await;
    let w = rig.worker(None).await;
    for n in 0..3 {
        let m = Message::once("user_suspended", &format!("u{n}"), None, serde_json::json!({}), Utc::now());
        outbox::store::insert(&w.store, &m).await.unwrap();
    }
    // An endpoint that hangs past the timeout while `hang` is set, and answers 200 after.
    let (hang, posts) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
    let (h, p) = (hang.clone(), posts.clone());
    let app = Router::new().route(
        "/hook",
        post(move || {
            let (h, p) = (h.clone(), p.clone());
            async move {
                p.fetch_add(1, Ordering::SeqCst);
                if h.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                "ok"
            }
        }),
    );
    let url = format!("{}/hook", serve_on_loopback(app).await);
    let mk = || deliverer(&rig, &url);

    let t0 = Utc::now();
    let r = mk().deliver(&w.store, t0, Bound::ForARun).await.unwrap();
    assert_eq!((r.delivered, r.failed), (0, 1), "{r:?}");
    let until = r.endpoint_down_until.expect("the endpoint is marked down");
    assert_eq!(outbox::store::endpoint_retry_at(&w.store, &url).await.unwrap(), Some(until), "in the store");
    // Another process's run within the back-off.
    let other_store = rig.db.store().await;
    let r = mk().deliver(&other_store, t0 + TimeDelta::seconds(1), Bound::ForARun).await.unwrap();
    assert_eq!((r.delivered, r.failed, r.left, r.endpoint_down_until), (0, 0, true, Some(until)), "{r:?}");
    assert_eq!(posts.load(Ordering::SeqCst), 1, "no POST within the back-off");

    let later = until + TimeDelta::seconds(1);
    let r = mk().deliver(&w.store, later, Bound::ForARun).await.unwrap();
    assert_eq!((r.delivered, r.failed), (0, 1), "tried again after the back-off: {r:?}");
    let until2 = r.endpoint_down_until.expect("still down");
    assert!(until2 - later > until - t0, "the back-off doubles: {} then {}", until - t0, until2 - later);
    assert_eq!(posts.load(Ordering::SeqCst), 2);

    hang.store(false, Ordering::SeqCst);
    let r = mk().deliver(&w.store, until2 + TimeDelta::seconds(1), Bound::Everything).await.unwrap();
    assert_eq!((r.delivered, r.failed, r.endpoint_down_until), (3, 0, None), "{r:?}");
    assert_eq!(outbox::store::endpoint_retry_at(&w.store, &url).await.unwrap(), None, "the mark is gone");
    assert!(outbox::store::list(&w.store, true, None, 100).await.unwrap().is_empty());
}
both_backends!(
    a_dead_endpoint_costs_one_timeout_per_back_off_not_one_per_run,
    super::a_dead_endpoint_costs_one_timeout_per_back_off_not_one_per_run
);
