//! The guard's one read: the user's block, grant and freshness, and for each destination considered its
//! bank day's counter, the amount held open against it (unless the caller has it from elsewhere: summing a
//! busy day's open holds is most of the read's cost), and whether the day is uncertain.

use chrono::{DateTime, Utc};

use super::{DenyReason, GuardAnswer, GuardRequest};
use crate::{
    astra::UserStatus,
    domain::BankDay,
    reconcile::registry::{Destination, DestinationRow},
    store::{Session, with_session},
    tokens::GrantStatus,
};

/// Everything the guard needs about one user, one row per destination considered and candidate bank day.
#[derive(Debug, sqlx::FromRow)]
struct Facts {
    grant_status: Option<String>,
    user_status: Option<String>,
    block_reason: Option<String>,
    as_of: Option<DateTime<Utc>>,
    destination_id: Option<String>,
    dest_user_id: Option<String>,
    kind: Option<String>,
    bank_time_zone: Option<String>,
    daily_limit_cents: Option<i64>,
    frozen: Option<bool>,
    push_enabled: Option<bool>,
    pull_enabled: Option<bool>,
    bank_day: Option<String>,
    total_cents: Option<i64>,
    holds_placed: Option<i64>,
    held_cents: Option<i64>,
    uncertain: Option<String>,
}

async fn facts(
    session: &mut Session<'_>,
    user_id: &str,
    destination: Option<&str>,
    days: [String; 3],
    now: DateTime<Utc>,
    sum_held: bool,
) -> sqlx::Result<Vec<Facts>> {
    // Two statements, not one with `($2 IS NULL AND …) OR …`: PostgreSQL's generic plan for that OR scans every
    // destination.
    let which = match destination {
        Some(_) => "d.destination_id = $2",
        None => "d.user_id = u0.user_id AND CAST($2 AS TEXT) IS NULL",
    };
    // Two statement texts, not a parameter: a generic plan serves each (the held sum's subquery is most of the
    // read's cost on a busy day).
    let held = if sum_held {
        "(SELECT CAST(COALESCE(SUM(h.amount_cents), 0) AS BIGINT) FROM guard_hold h
          WHERE h.destination_id = d.destination_id AND h.bank_day = days.day AND h.ended_at IS NULL
            AND h.expires_at > $6)"
    } else {
        "CAST(NULL AS BIGINT)"
    };
    let sql = format!(
        "SELECT g.status AS grant_status, g.user_status, b.reason AS block_reason, s.read_at AS as_of,
                d.destination_id, d.user_id AS dest_user_id, d.kind, d.bank_time_zone, d.daily_limit_cents, d.frozen,
                d.push_enabled, d.pull_enabled, days.day AS bank_day,
                i.total_cents, i.holds_placed,
                {held} AS held_cents,
                (SELECT MIN(u.detail) FROM uncertain_day u
                  WHERE u.destination_id = d.destination_id AND u.bank_day = days.day) AS uncertain
         FROM (SELECT CAST($1 AS TEXT) AS user_id) u0
         LEFT JOIN grant_token g ON g.user_id = u0.user_id
         LEFT JOIN user_block b ON b.user_id = u0.user_id
         LEFT JOIN transfer_sync s ON s.user_id = u0.user_id
         LEFT JOIN destination d ON {which}
         LEFT JOIN (SELECT CAST($3 AS TEXT) AS day UNION ALL SELECT CAST($4 AS TEXT) UNION ALL SELECT CAST($5 AS TEXT)) days
           ON d.destination_id IS NOT NULL
         LEFT JOIN inbound_day i ON i.destination_id = d.destination_id AND i.bank_day = days.day"
    );
    with_session!(session, |e| {
        let q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(user_id)
            .bind(destination)
            .bind(&days[0])
            .bind(&days[1])
            .bind(&days[2]);
        // `$6` is the held sum's alone.
        if sum_held { q.bind(now) } else { q }.fetch_all(e).await
    })
}

/// A destination as the guard sees it on its bank day at `now`.
#[derive(Clone)]
pub(super) struct DestinationDay {
    pub(super) destination: Destination,
    pub(super) day: BankDay,
    pub(super) total: i64,
    /// `None`: not read (the caller asked for the day without it).
    pub(super) held: Option<i64>,
    /// The count of holds placed on the day when `held` was summed (see [`crate::reconcile::holds::Figures`]).
    pub(super) placed: i64,
    pub(super) uncertain: Option<String>,
}

/// What the one read found: the answer so far (denied for the user as a whole), or the destinations to weigh.
pub(super) enum Read {
    Decided(GuardAnswer),
    Destinations(GuardAnswer, Vec<DestinationDay>),
}

/// The read, with each day's held sum when `sum_held`.
pub(super) async fn read(
    session: &mut Session<'_>,
    req: &GuardRequest<'_>,
    now: DateTime<Utc>,
    sum_held: bool,
) -> anyhow::Result<Read> {
    let answer = GuardAnswer::new(req);
    // The bank's day is the UTC date, the day before, or the day after, whatever its zone.
    let today = now.date_naive();
    let days = [today.pred_opt().unwrap_or(today), today, today.succ_opt().unwrap_or(today)]
        .map(|d| d.format("%Y-%m-%d").to_string());
    let rows = facts(session, req.user_id, req.destination_id, days, now, sum_held).await?;
    let Some(first) = rows.first() else {
        return Ok(Read::Decided(
            answer.deny(DenyReason::ReauthorizationRequired, Some("no grant for this user".into())),
        ));
    };
    let mut answer = answer;
    answer.as_of = first.as_of;
    if let Some(reason) = &first.block_reason {
        return Ok(Read::Decided(answer.deny(DenyReason::UserBlocked, Some(reason.clone()))));
    }
    match (&first.grant_status, &first.user_status) {
        (Some(_), Some(s)) if UserStatus::parse(s).is_some_and(UserStatus::is_barred) => {
            return Ok(Read::Decided(answer.deny(DenyReason::UserSuspended, Some(format!("Astra user status {s}")))));
        }
        (Some(status), _) if GrantStatus::parse(status) != Some(GrantStatus::Active) => {
            let detail = Some("the user's grant died".into());
            return Ok(Read::Decided(answer.deny(DenyReason::ReauthorizationRequired, detail)));
        }
        (None, _) => {
            let detail = Some("no grant for this user".into());
            return Ok(Read::Decided(answer.deny(DenyReason::ReauthorizationRequired, detail)));
        }
        _ => {}
    }
    // One destination per id, with the row of its own bank day.
    let mut out: Vec<DestinationDay> = Vec::new();
    for r in &rows {
        let Some(id) = &r.destination_id else { continue };
        if out.iter().any(|x| x.destination.destination_id == *id) {
            continue;
        }
        let destination = DestinationRow {
            destination_id: id.clone(),
            user_id: r.dest_user_id.clone().unwrap_or_default(),
            kind: r.kind.clone().unwrap_or_default(),
            bank_time_zone: r.bank_time_zone.clone().unwrap_or_default(),
            daily_limit_cents: r.daily_limit_cents.unwrap_or(0),
            frozen: r.frozen.unwrap_or(false),
            push_enabled: r.push_enabled,
            pull_enabled: r.pull_enabled,
        }
        .parse()?;
        let day = BankDay::of(destination.zone(), now);
        let key = day.key();
        let Some(row) =
            rows.iter().find(|x| x.destination_id.as_deref() == Some(id) && x.bank_day.as_deref() == Some(&key))
        else {
            anyhow::bail!("the guard's read missed bank day {key} of destination {id}");
        };
        out.push(DestinationDay {
            destination,
            day,
            total: row.total_cents.unwrap_or(0),
            held: if sum_held { Some(row.held_cents.unwrap_or(0)) } else { None },
            placed: row.holds_placed.unwrap_or(0),
            uncertain: row.uncertain.clone(),
        });
    }
    Ok(Read::Destinations(answer, out))
}
