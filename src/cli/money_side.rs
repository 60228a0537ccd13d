//! The money side's commands: `accounts import`, `cards freeze|unfreeze`, `users block|unblock`, `guard`,
//! `holds`.

use std::path::PathBuf;

use chrono::Utc;

use super::Format;
use crate::{
    app::Worker,
    config::GuardSettings,
    domain::money::Cents,
    domain::time::{parse_duration, utc_seconds},
    failure::{Failure, Status},
    jobs::reprocessing_check::{self, Recheck},
    reconcile::guard::{self, GuardRequest},
    reconcile::registry::{self, ImportLine},
    reconcile::{guard::HoldRequest, holds},
    store::Store,
};

#[derive(clap::Subcommand, Debug)]
pub(super) enum AccountsCommand {
    /// Import destinations (and ACH credits) as JSON lines, from FILE or stdin.
    Import { file: Option<PathBuf> },
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum CardsCommand {
    /// Mark a client-issued card frozen: the guard denies requests to it.
    Freeze { card_id: String },
    /// Unfreeze it, and re-check at once the transfers it held (when Astra credentials are set).
    Unfreeze { card_id: String },
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum UsersCommand {
    /// Stop routine requests for a user.
    Block {
        user_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Lift a block.
    Unblock { user_id: String },
}

#[derive(clap::Args, Debug)]
pub(super) struct GuardArgs {
    #[arg(long)]
    user: String,
    /// The request's amount in dollars (e.g. 12.50).
    #[arg(long)]
    amount: String,
    #[arg(long)]
    destination: Option<String>,
    /// When allowed, reserve the amount under this key (the routine's client_correlation_id) until its transfer
    /// is counted, the hold is released, or it expires. The same key again returns the same answer.
    #[arg(long, value_name = "KEY")]
    hold: Option<String>,
    /// How long the hold lasts (default: guard.hold_for, 1h).
    #[arg(long, requires = "hold", value_name = "DURATION")]
    hold_for: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum HoldsCommand {
    /// End a hold: its routine was not created.
    Release { key: String },
    /// Tie a hold to the routine Astra created for it, so the routine's transfer ends it.
    Attach {
        key: String,
        #[arg(long)]
        routine_id: String,
    },
    /// The holds, newest first.
    List {
        /// Only the holds still open.
        #[arg(long)]
        open: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

pub(super) async fn accounts(store: &Store, cmd: &AccountsCommand) -> anyhow::Result<Status> {
    let AccountsCommand::Import { file } = cmd;
    let (mut ok, mut bad) = (0, 0);
    for item in super::output::numbered_lines(super::output::input(file.as_ref())?) {
        let (n, line) = item?;
        let parsed = match line.and_then(|l| ImportLine::parse(l.as_bytes())) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("line {n}: skipped: {e}");
                bad += 1;
                continue;
            }
        };
        match registry::import(store, &parsed, Utc::now()).await {
            Ok(()) => ok += 1,
            Err(e) if crate::exit::classify(&e) == Status::No => {
                eprintln!("line {n}: skipped: {e:#}");
                bad += 1;
            }
            Err(e) => return Err(e.context(format!("line {n}"))),
        }
    }
    outln!("imported: {ok} lines, {bad} rejected");
    Ok(if bad > 0 { Status::No } else { Status::Ok })
}

pub(super) async fn cards(worker: &Worker, cmd: &CardsCommand) -> anyhow::Result<Status> {
    let (card, frozen) = match cmd {
        CardsCommand::Freeze { card_id } => (card_id, true),
        CardsCommand::Unfreeze { card_id } => (card_id, false),
    };
    if !registry::set_frozen(&worker.store, card, frozen, Utc::now()).await? {
        return Err(Failure::config(format!("no registered card {card} (import it with `accounts import`)")));
    }
    outln!("card {card}: {}", if frozen { "frozen" } else { "unfrozen" });
    if !frozen {
        recheck_card(worker, card).await?;
    }
    Ok(Status::Ok)
}

/// Re-checks at once the transfers the card held (without Astra credentials, the next run does).
async fn recheck_card(worker: &Worker, card: &str) -> anyhow::Result<()> {
    match reprocessing_check::recheck_card(worker, card).await? {
        Recheck::NothingHeld => {}
        Recheck::Later { held, why } => outln!("{held} held transfers: {why}"),
        Recheck::Done { held, details } => outln!("re-checked {held} held transfers: {details}"),
    }
    Ok(())
}

pub(super) async fn users(store: &Store, cmd: &UsersCommand) -> anyhow::Result<Status> {
    match cmd {
        UsersCommand::Block { user_id, reason } => {
            registry::block_user(store, user_id, reason, Utc::now()).await?;
            outln!("user {user_id}: blocked");
            // Blocked all the same (a block may come before the user's grant), but a mistyped id blocks nobody.
            // The block is stored: a failed look-up is said, not made the command's failure.
            match registry::user_known(store, user_id).await {
                Ok(true) => {}
                Ok(false) => eprintln!("user {user_id}: no grant or destination of this user is stored; check the id"),
                Err(e) => eprintln!("user {user_id}: could not check that the user is known: {e}"),
            }
        }
        UsersCommand::Unblock { user_id } => {
            let was = registry::unblock_user(store, user_id).await?;
            outln!("user {user_id}: {}", if was { "unblocked" } else { "was not blocked" });
        }
    }
    Ok(Status::Ok)
}

/// Prints the answer as JSON; exit 0 allowed, 1 denied.
pub(super) async fn guard(store: &Store, settings: &GuardSettings, args: &GuardArgs) -> anyhow::Result<Status> {
    let amount = Cents::parse_dollars(&args.amount).map_err(|e| Failure::Config(format!("--amount: {e}")))?;
    let req = GuardRequest { user_id: &args.user, amount, destination_id: args.destination.as_deref() };
    let now = Utc::now();
    let answer = match &args.hold {
        None => guard::check(store, settings, &req, now).await?,
        Some(key) => {
            let hold_for = match &args.hold_for {
                Some(d) => parse_duration(d).map_err(|e| Failure::Config(format!("--hold-for: {e}")))?,
                None => settings.hold_for,
            };
            guard::check_and_hold(store, settings, &req, &HoldRequest { key, hold_for }, now).await?
        }
    };
    outln!("{}", serde_json::to_string(&answer)?);
    Ok(if answer.allowed { Status::Ok } else { Status::No })
}

pub(super) async fn holds(store: &Store, cmd: &HoldsCommand) -> anyhow::Result<Status> {
    let now = Utc::now();
    match cmd {
        HoldsCommand::Release { key } => {
            if !holds::release(store, key, now).await? {
                return Err(Failure::config(format!("no open hold under key {}", crate::secrets::shown(key))));
            }
            outln!("hold {}: released", crate::secrets::shown(key));
        }
        HoldsCommand::Attach { key, routine_id } => {
            holds::attach(store, key, routine_id).await?;
            outln!("hold {}: attached to routine {routine_id}", crate::secrets::shown(key));
        }
        HoldsCommand::List { open, limit, format } => {
            let rows = holds::list(store, *open, now, *limit).await?;
            match format {
                Format::Json => outln!("{}", serde_json::to_string_pretty(&rows)?),
                Format::Text => {
                    outln!(
                        "{:<24} {:<16} {:<16} {:<10} {:>12} {:<20} state",
                        "key",
                        "user",
                        "destination",
                        "day",
                        "amount",
                        "expires"
                    );
                    for h in rows {
                        let state = match (&h.end_reason, h.is_open(now)) {
                            (Some(r), _) => r.clone(),
                            (None, true) => "open".into(),
                            (None, false) => "expired".into(),
                        };
                        outln!(
                            "{:<24} {:<16} {:<16} {:<10} {:>12} {:<20} {state}",
                            h.hold_key,
                            h.user_id,
                            h.destination_id,
                            h.bank_day,
                            Cents(h.amount_cents).to_string(),
                            utc_seconds(h.expires_at)
                        );
                    }
                }
            }
        }
    }
    Ok(Status::Ok)
}
