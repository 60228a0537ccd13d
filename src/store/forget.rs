//! Forgetting rows whose work is over, in bounded batches (the `retention` job): each table's owner says
//! which of its rows may go ([`Forget`]); this module only counts and deletes them, a batch per statement
//! (and commit), so no lock is held long and a stop between batches loses nothing.

use chrono::{DateTime, Utc};

use super::{Store, with_pool};

/// The rows of `table` that may be forgotten: those `done_before` the cutoff (`$1`), picked out by `key`
/// (one column, or several separated by commas).
pub struct Forget {
    pub table: &'static str,
    pub key: &'static str,
    pub done_before: &'static str,
}

impl Forget {
    /// How many rows could be forgotten at `cutoff`.
    pub async fn count(&self, store: &Store, cutoff: DateTime<Utc>) -> sqlx::Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {}", self.table, self.done_before);
        with_pool!(store, |p| sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(cutoff).fetch_one(p).await)
    }

    /// The keys of at most `$2` rows that may be forgotten at `$1` (any: the owner's index on when they
    /// ended finds them).
    pub fn candidates(&self) -> String {
        format!("SELECT {} FROM {} WHERE {} LIMIT $2", self.key, self.table, self.done_before)
    }

    /// Forgets at most `limit` of the [`candidates`](Self::candidates); how many it forgot.
    pub async fn some(&self, store: &Store, cutoff: DateTime<Utc>, limit: u32) -> sqlx::Result<u64> {
        // The condition again on the rows deleted: PostgreSQL rechecks only the outer one against a row another
        // transaction changed meanwhile (a slot claim taken over is running again).
        let sql = format!(
            "DELETE FROM {} WHERE ({}) IN ({}) AND {}",
            self.table,
            self.key,
            self.candidates(),
            self.done_before
        );
        with_pool!(store, |p| sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cutoff)
            .bind(i64::from(limit))
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
    }
}
