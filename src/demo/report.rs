//! What the demo shows: each job's figures, one guard answer of each kind, and the stand-in of the
//! fintech's endpoint that counts what the outbox delivered.

use std::sync::{Arc, atomic::AtomicU64};

use super::seed::{Kind, kind_of};
use crate::{
    reconcile::registry::{self},
    store::Store,
};

pub(super) fn figures(details: &serde_json::Value) -> String {
    details
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.ends_with("_unix"))
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub(super) fn pairs(v: &[(String, i64)]) -> String {
    v.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

/// Users that show each kind of answer: one under its limit, one over it, a frozen card, a blocked user and
/// a suspended one.
pub(super) async fn guard_examples(store: &Store) -> anyhow::Result<Vec<(String, &'static str, Option<String>)>> {
    async fn pick(store: &Store, sql: String) -> sqlx::Result<Option<String>> {
        crate::store::with_pool!(store, |p| sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_optional(p)
            .await)
    }
    let healthy = "FROM limit_decision l JOIN destination d ON d.destination_id = l.destination_id \
                   JOIN grant_token g ON g.user_id = d.user_id AND g.status = 'active' AND g.user_status IS NULL";
    let mut out = Vec::new();
    for (state, dollars) in [("ok", "50.00"), ("blocked", "1.00")] {
        let sql = format!(
            "SELECT d.user_id {healthy} WHERE l.state = '{state}' AND l.bank_day = \
             (SELECT MAX(m.bank_day) FROM limit_decision m WHERE m.destination_id = l.destination_id) \
             ORDER BY d.user_id LIMIT 1"
        );
        if let Some(u) = pick(store, sql).await? {
            out.push((u, dollars, None));
        }
    }
    let frozen = "SELECT d.destination_id FROM destination d JOIN grant_token g ON g.user_id = d.user_id \
                  WHERE d.frozen AND g.status = 'active' ORDER BY 1 LIMIT 1";
    if let Some(card) = pick(store, frozen.into()).await? {
        let user = registry::destination(store, &card).await?.map(|d| d.user_id).unwrap_or_default();
        out.push((user, "10.00", Some(card)));
    }
    out.push(("demo-user-0005".into(), "10.00", None));
    let suspended = "SELECT user_id FROM grant_token WHERE user_status = 'suspended' ORDER BY 1 LIMIT 1";
    if let Some(u) = pick(store, suspended.into()).await? {
        out.push((u, "10.00", None));
    }
    Ok(out)
}

/// The fintech's endpoint, stood in by a loopback receiver that acknowledges every message.
pub(super) struct Hook {
    pub(super) url: String,
    pub(super) suspended_prompted: Arc<AtomicU64>,
}

impl Hook {
    pub(super) async fn start() -> anyhow::Result<Hook> {
        use axum::{Router, routing::post};
        let suspended_prompted = Arc::new(AtomicU64::new(0));
        let counter = suspended_prompted.clone();
        let app = Router::new().route(
            "/astra-worker/events",
            post(move |body: String| {
                let counter = counter.clone();
                async move {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let uid = v["user_id"].as_str().unwrap_or_default();
                    let idx: usize = uid.trim_start_matches("demo-user-").parse().unwrap_or(0);
                    if v["kind"] == "reauthorization_prompt" && kind_of(idx) == Kind::Suspended {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/astra-worker/events", l.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Ok(Hook { url, suspended_prompted })
    }
}
