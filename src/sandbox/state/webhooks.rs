//! The webhooks the sandbox's state changes raise, queued for the sender (see `sandbox::webhooks`).

use serde_json::{Value, json};

use super::State;

impl State {
    /// Queues Astra's webhook for a change of `resource_id` (a transfer, a user), when a URL is set.
    pub(super) fn emit(&mut self, kind: &str, user_id: &str, resource_id: &str) {
        if self.settings.webhook_url.is_none() {
            return;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.outgoing.push(json!({
            "webhook_type": kind, "webhook_id": id, "user_id": user_id, "resource_id": resource_id,
        }));
    }

    /// The webhooks queued since the last call.
    pub(crate) fn take_webhooks(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.outgoing)
    }
}
