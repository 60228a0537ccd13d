//! The demo's service part: `serve` beside the sandbox, Astra's signed webhook (sent three times, as Astra
//! retries) moving the HTTP guard within moments, and one re-authorization completed through the code exchange.

use std::{sync::Arc, time::Instant};

use secrecy::SecretString;
use serde_json::{Value, json};

use crate::{
    app::Worker, astra::TransferStatus, domain::money::Cents, inbox::signature, reconcile::registry, sandbox::Sandbox,
    tokens::store as grant_store,
};

const KEY: &str = "demo-api-key";

/// Runs the service on a loopback port until the demo's worker stops; the report lines.
pub(super) async fn service(worker: &Arc<Worker>, sandbox: &Sandbox) -> anyhow::Result<Vec<String>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(crate::serve::serve_on(worker.clone(), listener, SecretString::from(KEY.to_string())));
    let http = reqwest::Client::new();
    let mut out = vec![format!("service: astra-worker serve on {base} (webhooks, /v1 for the backend)")];

    // A user with room today: Astra shows a transfer that takes all of it, and says so by webhook.
    let mut target = None;
    for (user, _, _) in super::report::guard_examples(&worker.store).await? {
        if let Some(d) = registry::destinations_of(&worker.store, &user).await?.into_iter().next() {
            target = Some((user, d.destination_id));
            break;
        }
    }
    if let Some((user, dest)) = target {
        let ask = json!({"user_id": user, "amount_cents": 100, "destination_id": dest});
        let guard = async |body: &Value| -> anyhow::Result<Value> {
            Ok(http.post(format!("{base}/v1/guard")).bearer_auth(KEY).json(body).send().await?.json().await?)
        };
        let before = guard(&ask).await?;
        let room = before["headroom_cents"].as_i64().unwrap_or(0) + 100;
        let now = chrono::Utc::now();
        sandbox.state().add_transfer(crate::sandbox::TransferRec {
            id: "demo-webhook-transfer".into(),
            user_id: user.clone(),
            routine_id: None,
            routine_type: Some("one-time".into()),
            client_correlation_id: None,
            source_id: Some("demo-source".into()),
            destination_id: Some(dest.clone()),
            amount: Cents(room),
            payment_type: "ach".into(),
            initiated: now,
            updated: now,
            estimated_clearing_date: now.date_naive(),
            status: TransferStatus::Processed,
            hold: None,
            failure_reason: None,
        });
        let body = json!({"webhook_type": "transfer_created", "webhook_id": "demo-webhook-1", "user_id": user,
                          "resource_id": "demo-webhook-transfer"})
        .to_string();
        let secret = worker.services()?.credentials.client_secret.clone();
        let started = Instant::now();
        for _ in 0..3 {
            http.post(format!("{base}/webhooks/astra"))
                .header("Astra-Verification", signature::sign(&secret, body.as_bytes()))
                .body(body.clone())
                .send()
                .await?;
        }
        let mut after = guard(&ask).await?;
        while after["allowed"] == true && started.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            after = guard(&ask).await?;
        }
        out.push(format!(
            "  webhook transfer_created (sent 3 times) for {} to {user}: POST /v1/guard {} -> {} after {} ms",
            Cents(room),
            if before["allowed"] == true { "allowed" } else { "denied" },
            after["reason"].as_str().unwrap_or("allowed"),
            started.elapsed().as_millis()
        ));
    }

    // A user whose grant died consents again; the redirect handler hands the code over.
    let dead = grant_store::list(&worker.store, Some("needs_reauth"), 1).await?.into_iter().next();
    // The code is minted in a statement of its own: the sandbox's lock must be free when the exchange reaches it.
    let code = dead.as_ref().and_then(|g| sandbox.state().mint_code(&g.user_id));
    if let (Some(g), Some(code)) = (dead, code) {
        let r: Value = http
            .post(format!("{base}/v1/grants/exchange"))
            .bearer_auth(KEY)
            .json(&json!({"user_id": g.user_id, "code": code}))
            .send()
            .await?
            .json()
            .await?;
        out.push(format!(
            "  re-authorization of {} through POST /v1/grants/exchange: grant {}, episode closed after {}s",
            g.user_id,
            r["grant"].as_str().unwrap_or("not stored"),
            r["episode_open_for_secs"]
        ));
    }
    // A card payout that landed once its card was unfrozen fails at Astra; Astra says so by webhook.
    let card_transfer = "demo-trf-0003-card";
    if sandbox.state().set_transfer_status(
        card_transfer,
        TransferStatus::Failed,
        Some("R01: insufficient funds".into()),
    ) {
        let body =
            json!({"webhook_type": "transfer_updated", "webhook_id": "demo-webhook-2", "user_id": "demo-user-0003",
                          "resource_id": card_transfer})
            .to_string();
        let secret = worker.services()?.credentials.client_secret.clone();
        let started = Instant::now();
        http.post(format!("{base}/webhooks/astra"))
            .header("Astra-Verification", signature::sign(&secret, body.as_bytes()))
            .body(body)
            .send()
            .await?;
        let mut followups = Vec::new();
        while followups.len() < 2 && started.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            followups = crate::outbox::store::list(&worker.store, false, None, 500)
                .await?
                .into_iter()
                .filter(|m| m.payload.contains(card_transfer) && m.kind != "transfer_stuck")
                .map(|m| m.kind)
                .collect();
        }
        out.push(format!(
            "  webhook transfer_updated: card payout {card_transfer} failed after landing -> {} within {} ms",
            if followups.is_empty() { "no follow-up".to_string() } else { followups.join(" + ") },
            started.elapsed().as_millis()
        ));
    }
    worker.shutdown.trigger("demo finished");
    task.await??;
    // What the service raised since its background deliverer's last pass.
    let svc = worker.services()?;
    crate::outbox::deliver_if_configured(svc.deliverer.as_ref(), &worker.store, crate::outbox::Bound::Everything)
        .await?;
    Ok(out)
}
