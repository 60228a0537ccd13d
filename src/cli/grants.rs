//! `astra-worker grants import|list|exchange`, `astra-worker token <user>`, `astra-worker keys rotate`:
//! grants in and out. Nothing here ever prints a token, except `token`, which prints the access token alone on stdout.

use std::path::PathBuf;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};

use super::Format;
use crate::{
    app::Worker,
    domain::time::utc_seconds,
    failure::Status,
    store::Store,
    tokens::Keyring,
    tokens::{self, ImportLine, Imported, store as grant_store},
};

#[derive(clap::Subcommand, Debug)]
pub(super) enum GrantsCommand {
    /// Import grants as JSON lines (from FILE, or stdin with `-` or nothing).
    Import { file: Option<PathBuf> },
    /// List grants (never a token).
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Exchange the authorization code a user's consent produced (the SDK redirect's `code`) for their grant
    /// and store it; closes the user's re-authorization episode. `--code -` reads the code from stdin.
    Exchange {
        #[arg(long)]
        user: String,
        #[arg(long)]
        code: String,
    },
}

impl GrantsCommand {
    /// The user and code of `grants exchange`, which needs Astra (the others need only the store).
    pub(super) fn exchange(&self) -> Option<(&str, &str)> {
        match self {
            GrantsCommand::Exchange { user, code } => Some((user, code)),
            _ => None,
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum KeysCommand {
    /// Re-encrypt every grant under ASTRA_WORKER_TOKEN_KEY (old keys in ASTRA_WORKER_TOKEN_KEY_PREVIOUS).
    Rotate,
}

pub(super) async fn grants(store: &Store, cmd: &GrantsCommand) -> anyhow::Result<Status> {
    match cmd {
        GrantsCommand::Import { file } => import(store, file.as_ref()).await,
        GrantsCommand::List { status, limit, format } => list(store, status.as_deref(), *limit, *format).await,
        GrantsCommand::Exchange { .. } => anyhow::bail!("grants exchange is dispatched with a worker"),
    }
}

async fn import(store: &Store, file: Option<&PathBuf>) -> anyhow::Result<Status> {
    let keyring = Keyring::from_env()?;
    tokens::check_keyring(store, &keyring).await?;
    let (mut new, mut replaced, mut unchanged, mut stale, mut bad) = (0, 0, 0, 0, 0);
    for item in super::output::numbered_lines(super::output::input(file)?) {
        let (n, line) = item?;
        // The parser's message names the field and echoes no value (a token, say).
        let parsed = match line.and_then(|l| ImportLine::parse_line(l.as_bytes(), Utc::now())) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("line {n}: skipped: {e}");
                bad += 1;
                continue;
            }
        };
        let user = crate::secrets::shown(&parsed.user_id);
        match tokens::import(store, &keyring, &parsed, Utc::now()).await {
            Ok(Imported::New) => new += 1,
            Ok(Imported::Replaced { episode_open_for }) => {
                replaced += 1;
                if let Some(d) = episode_open_for {
                    eprintln!("line {n}: user {user}: re-authorization episode closed after {}", human(d));
                }
            }
            Ok(Imported::Unchanged) => unchanged += 1,
            Ok(Imported::Stale) => {
                eprintln!("line {n}: user {user}: skipped: older than the stored grant");
                stale += 1;
            }
            Err(e) if crate::exit::classify(&e) == Status::No => {
                eprintln!("line {n}: user {user}: skipped: {e:#}");
                bad += 1;
            }
            Err(e) => return Err(e.context(format!("line {n}"))),
        }
    }
    outln!("imported: {new} new, {replaced} replaced, {unchanged} unchanged, {stale} stale, {bad} rejected");
    Ok(if bad > 0 { Status::No } else { Status::Ok })
}

fn human(d: chrono::TimeDelta) -> String {
    humantime::format_duration(std::time::Duration::from_secs(d.num_seconds().max(0) as u64)).to_string()
}

async fn list(store: &Store, status: Option<&str>, limit: i64, format: Format) -> anyhow::Result<Status> {
    let rows = grant_store::list(store, status, limit).await?;
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Text => {
            outln!(
                "{:<24} {:<13} {:<21} {:<21} {:<10} episode",
                "user",
                "status",
                "refresh expires",
                "last rotation",
                "user status"
            );
            for r in rows {
                outln!(
                    "{:<24} {:<13} {:<21} {:<21} {:<10} {}",
                    r.user_id,
                    r.status,
                    utc_seconds(r.refresh_expires_at),
                    r.last_rotated_at.map(utc_seconds).unwrap_or_else(|| "-".into()),
                    r.user_status.unwrap_or_else(|| "-".into()),
                    match (r.episode_reason, r.unreadable) {
                        (_, Some(_)) => "unreadable: re-import the user with the right key".to_string(),
                        (Some(e), None) => format!("open ({e})"),
                        (None, None) => "-".into(),
                    },
                );
            }
        }
    }
    Ok(Status::Ok)
}

/// `grants exchange`: prints what was stored as JSON (never a token); exit 1 when Astra refused the code or it
/// is another user's.
pub(super) async fn exchange(worker: &Worker, user_id: &str, code: &str) -> anyhow::Result<Status> {
    let code = if code == "-" {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        s.trim().to_string()
    } else {
        code.to_string()
    };
    let svc = worker.checked_services().await?;
    let done = tokens::exchange(&worker.store, &svc.tokens, user_id, &SecretString::from(code), Utc::now()).await?;
    outln!("{}", serde_json::to_string(&done)?);
    Ok(Status::Ok)
}

/// Prints a valid access token alone on stdout.
pub(super) async fn token(worker: &Worker, user_id: &str) -> anyhow::Result<Status> {
    let svc = worker.checked_services().await?;
    let t = tokens::access_token(&worker.store, &svc.tokens, user_id).await?;
    outln!("{}", t.expose_secret());
    Ok(Status::Ok)
}

pub(super) async fn keys(store: &Store, cmd: &KeysCommand) -> anyhow::Result<Status> {
    match cmd {
        KeysCommand::Rotate => {
            let keyring = Keyring::from_env()?;
            tokens::check_keyring(store, &keyring).await?;
            let n = tokens::rotate_keys(store, &keyring).await?;
            outln!("re-encrypted {n} grants under key {}", keyring.current_id());
            Ok(Status::Ok)
        }
    }
}
