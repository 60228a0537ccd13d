//! Injected store failures, for the fault suite: `fail_next(store, point, n)` makes the next `n` writes at a
//! named point fail as a database error would (the point checks [`injected`] first). Keyed by the database the
//! store opened, so tests running side by side on their own databases do not see each other's faults. Nothing
//! is armed in a normal run; checking costs one atomic load.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use super::Store;

static ARMED: AtomicBool = AtomicBool::new(false);
static FAULTS: Mutex<Option<HashMap<(String, &'static str), u32>>> = Mutex::new(None);

/// The point where a rotated pair is committed (`tokens::store::put_rotated`).
pub const PUT_ROTATED: &str = "put_rotated";
/// The point where a user's status read from Astra is stored (`tokens::store::set_user_status`: after a
/// rotation, a code exchange, a webhook).
pub const SET_USER_STATUS: &str = "set_user_status";

fn database(store: &Store) -> String {
    match store {
        Store::Sqlite(p) => p.connect_options().get_filename().display().to_string(),
        Store::Postgres(p) => p.connect_options().get_database().unwrap_or_default().to_string(),
    }
}

/// Makes the next `n` writes at `point` on this store's database fail.
pub fn fail_next(store: &Store, point: &'static str, n: u32) {
    let mut f = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    f.get_or_insert_with(HashMap::new).insert((database(store), point), n);
    ARMED.store(true, Ordering::Release);
}

/// An injected failure for this write at `point`, if one is armed.
pub(crate) fn injected(store: &Store, point: &'static str) -> sqlx::Result<()> {
    if !ARMED.load(Ordering::Acquire) {
        return Ok(());
    }
    let mut f = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    match f.as_mut().and_then(|m| m.get_mut(&(database(store), point))) {
        Some(n) if *n > 0 => {
            *n -= 1;
            Err(sqlx::Error::PoolTimedOut)
        }
        _ => Ok(()),
    }
}
