//! The guard: before the fintech sends a routine request, may it? One query reads the user's block, the
//! grant, the destinations with their limits and card flags, and for each the day's counter, the amount held
//! open against it (unless a hold is being placed on that day in this process: see [`check_and_hold`]),
//! whether the day is uncertain, and when the user's transfers were last read. With a hold
//! key, an allowed amount is reserved against the destination's bank day only if, under that day's lock, the
//! day's figures are still the ones it was decided on (else it is decided again on the figures found), so
//! concurrent guards never together pass the limit; holds contending for one day in one process are placed
//! together ([`lane`]). A limit is reached exactly when allowed: a request that brings the day's total to the
//! limit passes; one cent more does not.

use chrono::{DateTime, TimeDelta, Utc};
use tracing::instrument;

mod answer;
mod lane;
mod read;

pub use answer::{DenyReason, GuardAnswer, PlacedHold};
pub use lane::waiting as lane_waiting;
use read::{DestinationDay, Read, read};

use super::{
    holds::{self, Hold, Placement},
    registry::DestinationKind,
};
use crate::{
    config::{GuardSettings, MAX_HOLD_FOR, OnUncertain},
    domain::Cents,
    failure::Failure,
    store::{Session, Store},
};

#[derive(Debug, Clone)]
pub struct GuardRequest<'a> {
    pub user_id: &'a str,
    pub amount: Cents,
    pub destination_id: Option<&'a str>,
}

/// Reserve the amount, if allowed, under `key` until `expires_at`.
#[derive(Debug, Clone)]
pub struct HoldRequest<'a> {
    pub key: &'a str,
    pub hold_for: TimeDelta,
}

/// May `req` go out? Reads only; places no hold.
#[instrument(name = "guard", skip_all, fields(user_id = %req.user_id))]
pub async fn check(
    store: &Store,
    settings: &GuardSettings,
    req: &GuardRequest<'_>,
    now: DateTime<Utc>,
) -> anyhow::Result<GuardAnswer> {
    check_request(req)?;
    Ok(decide(&mut Session::pooled(store), settings, req, now, true).await?.0)
}

/// The request's own faults, found before the store is asked anything.
fn check_request(req: &GuardRequest<'_>) -> anyhow::Result<()> {
    if req.amount.0 <= 0 {
        return Err(Failure::config("the amount must be more than zero"));
    }
    // An id no store holds (empty, a NUL PostgreSQL refuses) would be read as "not registered: no limit".
    crate::secrets::check_id("user_id", req.user_id).map_err(Failure::Config)?;
    if let Some(d) = req.destination_id {
        crate::secrets::check_id("destination_id", d).map_err(Failure::Config)?;
    }
    Ok(())
}

/// The answer to a request [`check_request`] passed, and the destinations it weighed (none when the user as a
/// whole was denied). Without `sum_held` an allowed answer is not yet weighed against the daily limit (see
/// [`weigh`]).
async fn decide(
    session: &mut Session<'_>,
    settings: &GuardSettings,
    req: &GuardRequest<'_>,
    now: DateTime<Utc>,
    sum_held: bool,
) -> anyhow::Result<(GuardAnswer, Vec<DestinationDay>)> {
    let (answer, destinations) = match read(session, req, now, sum_held).await? {
        Read::Decided(a) => return Ok((a, Vec::new())),
        Read::Destinations(a, d) => (a, d),
    };
    if let Some(id) = req.destination_id {
        match destinations.first() {
            Some(d) if d.destination.user_id != req.user_id => {
                let detail = Some("the destination belongs to another user".into());
                return Ok((answer.deny(DenyReason::DestinationMismatch, detail), destinations));
            }
            None => {
                let mut a = answer;
                a.detail = Some(format!("destination {id} not registered: no limit applies"));
                return Ok((a, destinations));
            }
            Some(_) => {}
        }
    }
    // Several destinations and none named: the most restrictive answer stands.
    let mut best: Option<GuardAnswer> = None;
    for d in &destinations {
        let a = weigh(answer.clone(), settings, d, req.amount, now);
        best = match best {
            None => Some(a),
            Some(b) if !a.allowed && b.allowed => Some(a),
            Some(b) if a.allowed == b.allowed && a.headroom_cents < b.headroom_cents => Some(a),
            Some(b) => Some(b),
        };
    }
    Ok((best.unwrap_or(answer), destinations))
}

/// May `req` go out? When it may, reserves its amount under `hold.key` against the destination's bank day, on
/// the day's figures as they are under its lock (see [`place`]). The same key again returns the first answer
/// and holds once.
#[instrument(name = "guard", skip_all, fields(user_id = %req.user_id))]
pub async fn check_and_hold(
    store: &Store,
    settings: &GuardSettings,
    req: &GuardRequest<'_>,
    hold: &HoldRequest<'_>,
    now: DateTime<Utc>,
) -> anyhow::Result<GuardAnswer> {
    check_request(req)?;
    holds::check_key(hold.key).map_err(|e| Failure::Config(format!("{e} (--hold, hold_key)")))?;
    if hold.hold_for <= TimeDelta::zero() || hold.hold_for > MAX_HOLD_FOR {
        return Err(Failure::config(
            "the hold time (--hold-for, hold_for): a hold lasts longer than zero and at most 7 days",
        ));
    }
    // A named destination whose day has a lane open in this process is read without the day's held sum:
    // the lane decides the limit on the figures it carries from its last placement, or reads them once, and
    // checks them under the day's lock, while summing a busy day's open holds for every caller was most of
    // what each of them waited for.
    let sum_held = !req.destination_id.is_some_and(|d| lane::busy(store, d));
    // The read, the fast placement and any look-up of the key on one connection (see [`Session`]).
    let session = &mut Session::hold(store).await?;
    let (mut answer, mut destinations) = decide(session, settings, req, now, sum_held).await?;
    if !answer.allowed && answer.bank_day.is_some() && answer.held_cents.is_none() {
        // Denied on the day but not for its limit (stale, uncertain): answered with the day's figures.
        (answer, destinations) = decide(session, settings, req, now, true).await?;
    }
    // A key seen before is looked up only where it can matter (a denial, which may be this key's own hold
    // counting, or a key taken at the insert): one round trip less for every new hold.
    if !answer.allowed {
        return Ok(replay(session, req, hold.key).await?.unwrap_or(answer));
    }
    // The destination the amount goes to: the one named, or the user's only one. A request that can name none
    // may still be a retry of one that held (its registry changed since): its first answer stands.
    if matches!((req.destination_id, destinations.len()), (_, 0) | (None, 2..))
        && let Some(previous) = replay(session, req, hold.key).await?
    {
        return Ok(previous);
    }
    let target = match (req.destination_id, destinations.as_slice()) {
        (_, []) => {
            return Err(Failure::config(format!(
                "{}: no registered destination, so there is no limit to hold against (register it with `accounts import`)",
                req.destination_id.map(|d| format!("destination {d}")).unwrap_or_else(|| "the user".into())
            )));
        }
        (Some(_), [d]) | (None, [d]) => d,
        (None, _) => {
            return Err(Failure::config(
                "the user has several destinations: name the one the routine pays into with --destination",
            ));
        }
        (Some(id), many) => many.iter().find(|d| d.destination.destination_id == id).unwrap_or(&many[0]),
    };
    place(session, settings, req, hold, target, answer, now).await
}

/// The answer given earlier under `key`, when the key was used for this very request.
async fn replay(session: &mut Session<'_>, req: &GuardRequest<'_>, key: &str) -> anyhow::Result<Option<GuardAnswer>> {
    let Some((h, answer)) = holds::get(session, key).await? else { return Ok(None) };
    let same = h.user_id == req.user_id
        && h.amount_cents == req.amount.0
        && req.destination_id.is_none_or(|d| d == h.destination_id);
    if !same {
        return Err(Failure::config(format!(
            "the hold key {} was used for another request (user, amount or destination differ)",
            crate::secrets::shown(key)
        )));
    }
    Ok(Some(serde_json::from_str(&answer)?))
}

/// Places the hold, in its destination-day's lane (see [`lane`]): decided again, under the day's lock, on the
/// day's figures as they are then (another hold or a counted transfer since the read), so concurrent guards
/// never together pass the limit.
async fn place(
    session: &mut Session<'_>,
    settings: &GuardSettings,
    req: &GuardRequest<'_>,
    hold: &HoldRequest<'_>,
    target: &DestinationDay,
    answer: GuardAnswer,
    now: DateTime<Utc>,
) -> anyhow::Result<GuardAnswer> {
    let expires_at = now + hold.hold_for;
    let row = Hold {
        hold_key: hold.key.to_string(),
        user_id: req.user_id.to_string(),
        destination_id: target.destination.destination_id.clone(),
        bank_day: target.day.key(),
        amount_cents: req.amount.0,
        routine_id: None,
        created_at: now,
        expires_at,
        ended_at: None,
        end_reason: None,
        transfer_id: None,
    };
    let placed = PlacedHold { key: hold.key.to_string(), amount_cents: req.amount.0, expires_at };
    let (settings, target_day, amount) = (settings.clone(), target.clone(), req.amount);
    let decide = move |total: i64, held: i64| {
        let day = DestinationDay { total, held: Some(held), ..target_day.clone() };
        let mut a = weigh(answer.clone(), &settings, &day, amount, now);
        if a.allowed {
            a.hold = Some(placed.clone());
        }
        a
    };
    // Without the day's held sum (a busy day) the lane decides it on the figures it carries or reads.
    let seen = target.held.map(|held| holds::Figures { total: target.total, held, placed: target.placed });
    if let Some(seen) = seen {
        let a = decide(seen.total, seen.held);
        if !a.allowed {
            return Ok(replay(session, req, hold.key).await?.unwrap_or(a));
        }
    }
    let ask = lane::Ask { hold: row, seen, decide: std::sync::Arc::new(decide) };
    match lane::place(session, ask).await? {
        (Placement::Placed, a) => Ok(a),
        // Denied on the figures found: the hold counted may be this key's own, placed a moment ago.
        (Placement::Declined, a) => Ok(replay(session, req, hold.key).await?.unwrap_or(a)),
        (Placement::KeyTaken, _) => {
            replay(session, req, hold.key).await?.ok_or_else(|| anyhow::anyhow!("the hold vanished"))
        }
    }
}

/// The answer for one destination on its bank day. A day read without its held sum is weighed on all but
/// the limit (`held_cents` stays `None`): [`check_and_hold`] never gives such an answer as it is, but decides
/// it again on the day's figures, in the hold's placement or (a denial) by reading the day again.
fn weigh(
    mut a: GuardAnswer,
    settings: &GuardSettings,
    d: &DestinationDay,
    amount: Cents,
    now: DateTime<Utc>,
) -> GuardAnswer {
    let dest = &d.destination;
    a.destination_id = Some(dest.destination_id.clone());
    if dest.kind == DestinationKind::Card && dest.frozen {
        return a.deny(DenyReason::CardFrozen, Some("the card is frozen by its issuer".into()));
    }
    if dest.kind == DestinationKind::Card && dest.push_enabled == Some(false) {
        return a.deny(DenyReason::CardNotPushEnabled, None);
    }
    let limit = dest.limit().0;
    a.bank_day = Some(d.day.key());
    a.day_total_cents = Some(d.total);
    a.held_cents = d.held;
    a.daily_limit_cents = Some(limit);
    if let Some(max) = settings.max_staleness
        && a.as_of.is_none_or(|t| now - t > max)
    {
        let when = a.as_of.map(|t| format!("last read {t}")).unwrap_or_else(|| "never read".into());
        let detail = format!("the user's transfers were {when}; guard.max_staleness is {}s", max.num_seconds());
        return a.deny(DenyReason::CounterStale, Some(detail));
    }
    if let Some(why) = &d.uncertain {
        a.uncertain = true;
        if settings.on_uncertain == OnUncertain::Deny {
            return a.deny(DenyReason::CounterUncertain, Some(format!("the day's counter is uncertain: {why}")));
        }
    }
    let Some(held) = d.held else { return a };
    let room = limit - d.total - held;
    if amount.0 > room {
        a.headroom_cents = Some(room.max(0));
        a.block_lifts_at = Some(d.day.end());
        let detail = format!(
            "{} counted + {} held today + {} would pass the daily limit of {}",
            Cents(d.total),
            Cents(held),
            amount,
            Cents(limit)
        );
        return a.deny(DenyReason::DailyLimit, Some(detail));
    }
    a.headroom_cents = Some(room - amount.0);
    a
}
