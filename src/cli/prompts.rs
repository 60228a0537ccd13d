//! `astra-worker prompts list`: the outbox of prompts and follow-ups, delivered or not.

use super::Format;
use crate::{domain::time::utc_seconds, failure::Status, outbox::store as outbox_store, store::Store};

#[derive(clap::Subcommand, Debug)]
pub(super) enum PromptsCommand {
    /// List outbox messages, newest first.
    List {
        /// Only messages not yet delivered.
        #[arg(long)]
        open: bool,
        /// Only this kind (reauthorization_prompt, user_suspended, …).
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

pub(super) async fn run(store: &Store, cmd: &PromptsCommand) -> anyhow::Result<Status> {
    let PromptsCommand::List { open, kind, limit, format } = cmd;
    let rows = outbox_store::list(store, *open, kind.as_deref(), *limit).await?;
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Text => {
            outln!("{:<24} {:<24} {:<21} {:>8}  {:<10} key", "kind", "user", "created (UTC)", "attempts", "delivered");
            for r in rows {
                outln!(
                    "{:<24} {:<24} {:<21} {:>8}  {:<10} {}",
                    r.kind,
                    r.user_id.unwrap_or_default(),
                    utc_seconds(r.created_at),
                    r.attempts,
                    if r.delivered_at.is_some() { "yes" } else { "no" },
                    r.idempotency_key
                );
            }
        }
    }
    Ok(Status::Ok)
}
