//! The daily recompute at size: 1,000,000 mirrored transfers over 100,000 destinations on one bank day (their
//! counters right, as the mirror keeps them), on each store. The recompute's pass (`counters::zone_day_findings`:
//! one `GROUP BY` joined with the counters and uncertain days, returning the days that drifted or are uncertain)
//! against the bare `GROUP BY` on the same
//! database in the same run, the median of three each; then the whole `inbound-volume` decision step, first
//! of the day (every decision written) and again (none changed, none written).

use std::time::{Duration, Instant};

use astra_worker::{
    app::{Services, Worker},
    astra::Credentials,
    config::JobName,
    domain::BankDay,
    reconcile::counters,
    runner::{RunOptions, run_job},
    store::Store,
};
use chrono::Utc;

use super::{Report, fresh, human, keyring, settings};

const DESTINATIONS: i64 = 100_000;
const TRANSFERS: i64 = 1_000_000;
const ZONE: &str = "America/New_York";

/// Destinations, transfers and counters, in bulk.
async fn seed(store: &Store, day: &str) {
    let statements: [&str; 4] = match store {
        Store::Postgres(_) => [
            "INSERT INTO destination (destination_id, user_id, kind, bank_time_zone, daily_limit_cents, updated_at)
             SELECT 'd' || g, 'u' || g, 'account', 'America/New_York', 250000, now() FROM generate_series(1, 100000) g",
            "INSERT INTO transfer (id, user_id, version, destination_id, amount_cents, status, initiated_at, bank_day,
                 counted, first_seen_at, last_seen_at)
             SELECT 't' || g, 'u' || (g % 100000 + 1), 1, 'd' || (g % 100000 + 1), 100 + g % 5000,
                    CASE WHEN g % 49 = 0 THEN 'failed' ELSE 'processed' END, now(), $1, g % 49 <> 0, now(), now()
             FROM generate_series(1, 1000000) g",
            "INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers)
             SELECT destination_id, bank_day, SUM(amount_cents), COUNT(*) FROM transfer
             WHERE status NOT IN ('failed', 'cancelled') GROUP BY destination_id, bank_day",
            "ANALYZE",
        ],
        Store::Sqlite(_) => [
            "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 100000)
             INSERT INTO destination (destination_id, user_id, kind, bank_time_zone, daily_limit_cents, updated_at)
             SELECT 'd' || x, 'u' || x, 'account', 'America/New_York', 250000, '2026-12-01T00:00:00Z' FROM g",
            "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 1000000)
             INSERT INTO transfer (id, user_id, version, destination_id, amount_cents, status, initiated_at, bank_day,
                 counted, first_seen_at, last_seen_at)
             SELECT 't' || x, 'u' || (x % 100000 + 1), 1, 'd' || (x % 100000 + 1), 100 + x % 5000,
                    CASE WHEN x % 49 = 0 THEN 'failed' ELSE 'processed' END, '2026-12-01T12:00:00Z', $1, x % 49 <> 0,
                    '2026-12-01T12:00:00Z', '2026-12-01T12:00:00Z'
             FROM g",
            "INSERT INTO inbound_day (destination_id, bank_day, total_cents, transfers)
             SELECT destination_id, bank_day, SUM(amount_cents), COUNT(*) FROM transfer
             WHERE status NOT IN ('failed', 'cancelled') GROUP BY destination_id, bank_day",
            "ANALYZE",
        ],
    };
    for sql in statements {
        match store {
            Store::Postgres(p) => {
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(day).execute(p).await.unwrap();
            }
            Store::Sqlite(p) => {
                let q = sqlx::query(sqlx::AssertSqlSafe(sql));
                let q = if sql.contains("$1") { q.bind(day) } else { q };
                q.execute(p).await.unwrap();
            }
        }
    }
}

async fn bare_group_by(store: &Store, day: &str) -> usize {
    const SQL: &str = "SELECT destination_id, CAST(SUM(amount_cents) AS BIGINT), COUNT(*) FROM transfer
                       WHERE bank_day = $1 AND status NOT IN ('failed', 'cancelled') GROUP BY destination_id";
    match store {
        Store::Postgres(p) => sqlx::query(SQL).bind(day).fetch_all(p).await.unwrap().len(),
        Store::Sqlite(p) => sqlx::query(SQL).bind(day).fetch_all(p).await.unwrap().len(),
    }
}

/// The same `GROUP BY` consumed inside the database (its groups counted, none returned): the aggregation's own
/// cost, without carrying 100,000 rows to the caller.
async fn group_by_in_database(store: &Store, day: &str) -> i64 {
    const SQL: &str = "SELECT COUNT(*) FROM (SELECT destination_id, SUM(amount_cents) AS total FROM transfer
                       WHERE bank_day = $1 AND status NOT IN ('failed', 'cancelled') GROUP BY destination_id) g
                       WHERE total >= 0";
    match store {
        Store::Postgres(p) => sqlx::query_scalar(SQL).bind(day).fetch_one(p).await.unwrap(),
        Store::Sqlite(p) => sqlx::query_scalar(SQL).bind(day).fetch_one(p).await.unwrap(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(super) async fn bench(report: &mut Report, pg: Option<&str>) {
    let day = BankDay::of(ZONE.parse().unwrap(), Utc::now()).key();
    let mut ratios = Vec::new();
    for (label, admin) in [("SQLite", None), ("PostgreSQL", pg)] {
        if label == "PostgreSQL" && admin.is_none() {
            continue;
        }
        let (url, _dir) = fresh(admin).await;
        let store = Store::open(&url).await.unwrap();
        let t = Instant::now();
        seed(&store, &day).await;
        let seeded = t.elapsed();
        let (mut bare, mut inside, mut pass) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let t = Instant::now();
            let groups = bare_group_by(&store, &day).await;
            bare.push(t.elapsed());
            let t = Instant::now();
            assert_eq!(group_by_in_database(&store, &day).await, DESTINATIONS);
            inside.push(t.elapsed());
            let t = Instant::now();
            let findings = counters::zone_day_findings(&store, ZONE, &day).await.unwrap();
            pass.push(t.elapsed());
            assert_eq!(groups, DESTINATIONS as usize);
            assert!(findings.is_empty(), "the counters were seeded right: {} findings", findings.len());
        }
        let (bare, inside, pass) = (median(bare), median(inside), median(pass));
        let ratio = pass.as_secs_f64() / bare.as_secs_f64();
        let inside_ratio = pass.as_secs_f64() / inside.as_secs_f64();
        ratios.push(format!("{label} {ratio:.2}× ({})", if ratio <= 1.5 { "met" } else { "not met" }));
        report.row(
            "aggregation",
            format!("the recompute's pass [{label}]"),
            format!(
                "{TRANSFERS} transfers (2 % failed) over {DESTINATIONS} destinations on one bank day, counters right \
                 (seeded in {:.0} s), so no day is returned; median of 3 against the bare GROUP BY on the same \
                 database, fetched (its 100,000 groups returned) and consumed in the database (counted)",
                seeded.as_secs_f64()
            ),
            format!(
                "{} against {} fetched: {ratio:.2}× (target ≤ 1.5×); against {} in the database: {inside_ratio:.2}×",
                human(pass),
                human(bare),
                human(inside)
            ),
        );
        let sb = astra_worker::sandbox::SandboxSettings::default();
        let credentials = Credentials { client_id: sb.client_id.into(), client_secret: sb.client_secret.into() };
        let w = Worker::with_services(settings(None), store, |s, l, st| {
            Services::new(s, credentials, keyring(), None, l, st)
        })
        .unwrap();
        let mut decide = Vec::new();
        // The latest slot alone, twice (catch-up would also run the missed slots of the days before).
        let latest = w.settings.job(JobName::InboundVolume).and_then(|j| j.schedule.latest_at_or_before(Utc::now()));
        for _ in 0..2 {
            let opts = RunOptions { slot: latest, force: true, ..Default::default() };
            let t = Instant::now();
            let s = run_job(&w, JobName::InboundVolume, &opts, Utc::now()).await.unwrap();
            decide.push((t.elapsed(), s.status()));
        }
        report.row(
            "aggregation",
            format!("`inbound-volume`, its decision step [{label}]"),
            "the same store; no grants, so the run is the recompute of the slot's two bank days, drift fixing and \
             the decisions"
                .to_string(),
            format!(
                "first of the day (every decision written): {}; again, nothing changed (none written): {}; {:?}",
                human(decide[0].0),
                human(decide[1].0),
                decide[1].1
            ),
        );
        w.store.close().await;
    }
    report.note(
        "aggregation",
        format!(
            "Target: the pass within 1.5× of the bare GROUP BY: {}. The pass compares each destination's sum with \
             its counter in the database and returns only the days that drifted or are uncertain; the decisions are \
             then one INSERT … SELECT from the counters (in the decision step's figures).",
            ratios.join(", ")
        ),
    );
}
