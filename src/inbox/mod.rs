//! Astra's webhooks in: verified ([`signature`]), stored once per `webhook_id` in the inbox ([`store`]), and
//! processed in the background ([`process`]). A webhook is a hint that never carries the new state: each one
//! makes the worker GET the resource with the user's token and record it exactly as polling does, so
//! duplicates and reordering change nothing, and the polling jobs stay the backstop.

pub mod process;
pub mod signature;
pub mod store;

use serde::Deserialize;

use crate::failure::Failure;

/// The largest webhook body accepted (Astra's are a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// A webhook as Astra sends it: `{"webhook_type", "webhook_id", "user_id", "resource_id"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Webhook {
    pub webhook_type: String,
    pub webhook_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub resource_id: Option<String>,
}

fn printable(field: &str, v: &str, max: usize) -> Result<(), String> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(format!("{field}: must be 1 to {max} printable characters"));
    }
    Ok(())
}

impl Webhook {
    /// Parses a verified body; the error names the field.
    pub fn parse(body: &[u8]) -> anyhow::Result<Webhook> {
        let w: Webhook =
            crate::secrets::parse_json(body).map_err(|e| Failure::rejected(format!("webhook body: {e}")))?;
        printable("webhook_id", &w.webhook_id, 256).map_err(Failure::rejected)?;
        printable("webhook_type", &w.webhook_type, 64).map_err(Failure::rejected)?;
        for (f, v) in [("user_id", &w.user_id), ("resource_id", &w.resource_id)] {
            if let Some(v) = v {
                printable(f, v, 256).map_err(Failure::rejected)?;
            }
        }
        Ok(w)
    }
}
