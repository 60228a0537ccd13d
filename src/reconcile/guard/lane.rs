//! Holds on one destination's bank day, placed together. A hold asked for while this process is placing
//! another on the same destination-day waits in that day's lane; the lane then places every hold waiting in
//! it in one round trip and one commit under the day's lock, deciding them in the order they came. So callers
//! contending for one destination wait for one commit, not for one each. Other processes meet this one at the
//! day's lock, as any writer of the day does.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError},
};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::GuardAnswer;
use crate::{
    reconcile::holds::{self, Attempt, Figures, Hold, Placement},
    store::{Session, Store},
};

/// The most holds one placement carries.
const MAX_TOGETHER: usize = 64;
/// Round trips of the fast path before the lane takes the day's lock for a whole transaction (PostgreSQL:
/// figures that move every time mean another process is placing holds on the same day).
const FAST_TRIES: usize = 3;

/// One hold to place: its row, the figures its answer was decided on (if it was), and how to decide it on
/// other figures (counted total, held sum).
#[derive(Clone)]
pub(super) struct Ask {
    pub(super) hold: Hold,
    pub(super) seen: Option<Figures>,
    pub(super) decide: Arc<dyn Fn(i64, i64) -> GuardAnswer + Send + Sync>,
}

struct Waiting {
    ask: Ask,
    /// Dropped unanswered when the placement it was part of failed or stopped: the caller then places its hold
    /// alone and hears its own error.
    reply: oneshot::Sender<(Placement, GuardAnswer)>,
}

/// A lane: the store (its identity, see [`Store::identity`]: the lane's placer holds the store, so the
/// identity cannot be reused while the lane lives), the destination and the bank day.
type LaneKey = (usize, String, String);

static LANES: LazyLock<Mutex<HashMap<LaneKey, Vec<Waiting>>>> = LazyLock::new(Default::default);

fn lanes() -> MutexGuard<'static, HashMap<LaneKey, Vec<Waiting>>> {
    LANES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many holds wait in the lane of `store`'s destination-day (`None`: no lane is open; `Some(0)`: a placement
/// is under way and nothing waits behind it).
pub fn waiting(store: &Store, destination_id: &str, bank_day: &str) -> Option<usize> {
    lanes().get(&(store.identity(), destination_id.to_string(), bank_day.to_string())).map(Vec::len)
}

/// Whether a lane is open on one of the bank days of `store`'s destination `destination_id`.
pub(super) fn busy(store: &Store, destination_id: &str) -> bool {
    let id = store.identity();
    lanes().keys().any(|(s, d, _)| *s == id && d == destination_id)
}

/// Places `ask`'s hold, with the others waiting on its destination-day. The caller that opens the lane places
/// what waits in it then (its own hold, at least), on its session (on PostgreSQL its connection, but for the
/// locked path); what arrives meanwhile is placed by a task of the lane's own, so that no caller's answer
/// waits for more than the placement before its own. A caller that waits gives its connection back first: the
/// lane's placer may need one.
pub(super) async fn place(session: &mut Session<'_>, ask: Ask) -> anyhow::Result<(Placement, GuardAnswer)> {
    let store = session.store();
    let key = (store.identity(), ask.hold.destination_id.clone(), ask.hold.bank_day.clone());
    let mine = ask.clone();
    let (reply, answer) = oneshot::channel();
    let opened = match lanes().entry(key.clone()) {
        Entry::Occupied(mut e) => {
            e.get_mut().push(Waiting { ask, reply });
            false
        }
        Entry::Vacant(e) => {
            e.insert(vec![Waiting { ask, reply }]);
            true
        }
    };
    if !opened {
        session.release();
    }
    if opened && let Left::Waiting(close, figures) = drain(session, Close(Some(key)), None, Some(1)).await {
        let store = store.clone();
        tokio::spawn(async move { drain(&mut Session::pooled(&store), close, figures, None).await });
    }
    match answer.await {
        Ok(done) => Ok(done),
        Err(_) => {
            // The failed placement may have been this caller's own, on its connection: a pinged one now.
            session.release();
            let (mut placed, _) = place_together(session, std::slice::from_ref(&mine), None).await?;
            placed.pop().ok_or_else(|| anyhow::anyhow!("the hold was not decided"))
        }
    }
}

/// The lane a placer owns. Dropped while it still holds the key (its placer stopped early: a caller gone
/// away, a panic, a task dropped unrun as the runtime shuts down), it removes the lane: the waiters,
/// unanswered, each place their hold alone, and the next hold opens a new lane.
struct Close(Option<LaneKey>);

impl Drop for Close {
    fn drop(&mut self) {
        if let Some(key) = self.0.take() {
            lanes().remove(&key);
        }
    }
}

/// The day's figures after a placement, and the time they were taken at (the placement's `now`; see
/// [`place_together`]).
type Known = (Figures, DateTime<Utc>);

/// What a placer leaves: an empty lane (removed), or holds still waiting, the lane, and the day's figures if
/// known.
enum Left {
    Empty,
    Waiting(Close, Option<Known>),
}

/// Places what waits in the lane, a placement at a time, until nothing does (and removes the lane) or after
/// `rounds` placements. A waiter whose caller went away is dropped unplaced.
async fn drain(session: &mut Session<'_>, mut close: Close, mut figures: Option<Known>, rounds: Option<usize>) -> Left {
    let Some(key) = close.0.clone() else { return Left::Empty };
    let mut round = 0;
    loop {
        let batch: Vec<Waiting> = {
            let mut lanes = lanes();
            if let Some(waiting) = lanes.get_mut(&key) {
                waiting.retain(|w| !w.reply.is_closed());
            }
            let Some(waiting) = lanes.get_mut(&key).filter(|w| !w.is_empty()) else {
                lanes.remove(&key);
                close.0 = None;
                return Left::Empty;
            };
            if rounds == Some(round) {
                drop(lanes);
                return Left::Waiting(close, figures);
            }
            let n = waiting.len().min(MAX_TOGETHER);
            waiting.drain(..n).collect()
        };
        round += 1;
        let (asks, replies): (Vec<Ask>, Vec<_>) = batch.into_iter().map(|w| (w.ask, w.reply)).unzip();
        match place_together(session, &asks, figures).await {
            Ok((placed, after)) => {
                figures = after;
                for (reply, done) in replies.into_iter().zip(placed) {
                    let _ = reply.send(done);
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), holds = asks.len(), "placing holds together failed; each is placed alone");
                figures = None;
            }
        }
    }
}

/// Places `asks` (all on one destination-day), deciding each in order on the day's figures: first in one
/// round trip on the figures last known (`known`, else the first ask's, else read), again on the figures
/// found when they moved, and at last in a transaction holding the day's lock. A key asked again after it was
/// placed hears `KeyTaken` (the guard then gives the answer stored with it). Gives each ask's placement and
/// answer, and the day's figures after, when known.
///
/// The placement's `now` (which holds count as not yet expired) is the latest of its asks' times and of the
/// time `known` was taken at: a caller whose read was slow can join a later placement than a caller who
/// asked after it, and figures carried from a later `now` miss the holds that expired in between.
async fn place_together(
    session: &mut Session<'_>,
    asks: &[Ask],
    known: Option<Known>,
) -> anyhow::Result<(Vec<(Placement, GuardAnswer)>, Option<Known>)> {
    let Some(first) = asks.first() else { return Ok((Vec::new(), known)) };
    let day = (first.hold.destination_id.as_str(), first.hold.bank_day.as_str());
    let latest = asks.iter().map(|a| a.hold.created_at).max().unwrap_or(first.hold.created_at);
    let now = known.map_or(latest, |(_, at)| latest.max(at));
    let (placed, after) = place_at(session, day, now, known.map(|(f, _)| f), asks).await?;
    Ok((placed, after.map(|f| (f, now))))
}

/// [`place_together`] at `now`, on the figures carried from the last placement (if any).
async fn place_at(
    session: &mut Session<'_>,
    day: (&str, &str),
    now: DateTime<Utc>,
    carried: Option<Figures>,
    asks: &[Ask],
) -> anyhow::Result<(Vec<(Placement, GuardAnswer)>, Option<Figures>)> {
    let Some(first) = asks.first() else { return Ok((Vec::new(), carried)) };
    let mut seen = match carried.or(first.seen) {
        Some(seen) => seen,
        None if session.store().is_postgres() => holds::figures(session, day, now).await?,
        // The locked path, SQLite's only one, reads the figures itself.
        None => return place_all_locked(session, day, now, None, asks).await,
    };
    // `checked`: `seen` was summed under the day's lock in this placement.
    let (mut taken, mut checked): (HashSet<&str>, bool) = (HashSet::new(), false);
    for _ in 0..FAST_TRIES {
        let (mut out, mut rows, mut held) = (Vec::with_capacity(asks.len()), Vec::new(), seen.held);
        let mut placing: HashSet<&str> = HashSet::new();
        for a in asks {
            let answer = (a.decide)(seen.total, held);
            let key = a.hold.hold_key.as_str();
            let placement = if placing.contains(key) || taken.contains(key) {
                Placement::KeyTaken
            } else if answer.allowed {
                placing.insert(key);
                held += a.hold.amount_cents;
                rows.push((&a.hold, serde_json::to_string(&answer)?));
                Placement::Placed
            } else {
                Placement::Declined
            };
            out.push((placement, answer));
        }
        // A denial stands on figures summed under the day's lock in this placement: others are checked first
        // (figures carried from the last placement may hold more than is held now: a hold released or expired
        // since). With nothing to store and no denial to check (each key found taken: a retry of a hold placed,
        // or a key already used elsewhere), the day is left as it was, and the figures it was decided on stand
        // for the next placement to check.
        let exact = !checked && out.iter().any(|(p, _)| *p == Placement::Declined);
        if rows.is_empty() && !exact {
            return Ok((out, Some(seen)));
        }
        let refs: Vec<(&Hold, &str)> = rows.iter().map(|(h, a)| (*h, a.as_str())).collect();
        match holds::place_if_unchanged(session, day, now, seen, exact, &refs).await? {
            Attempt::Placed { taken, after } if taken.is_empty() => return Ok((out, Some(after))),
            Attempt::Placed { taken, .. } => {
                for (p, _) in out.iter_mut().zip(asks).filter(|(_, a)| taken.contains(&a.hold.hold_key)) {
                    p.0 = Placement::KeyTaken;
                }
                return Ok((out, None));
            }
            Attempt::Changed(found) => {
                seen = found;
                checked = true;
            }
            Attempt::Taken(keys) => {
                checked |= exact;
                let keys: HashSet<String> = keys.into_iter().collect();
                taken.extend(asks.iter().map(|a| a.hold.hold_key.as_str()).filter(|k| keys.contains(*k)));
            }
            Attempt::Unsupported => return place_all_locked(session, day, now, Some(seen), asks).await,
        }
    }
    place_all_locked(session, day, now, None, asks).await
}

/// Places `asks` in one transaction holding the day's lock, each decided on the figures `carried` if the day's
/// are still theirs, else on the figures found there. The transaction takes the pool's connection (and on
/// SQLite waits for its write turn): the session's is given back first.
async fn place_all_locked(
    session: &mut Session<'_>,
    day: (&str, &str),
    now: DateTime<Utc>,
    carried: Option<Figures>,
    asks: &[Ask],
) -> anyhow::Result<(Vec<(Placement, GuardAnswer)>, Option<Figures>)> {
    let rows: Vec<Hold> = asks.iter().map(|a| a.hold.clone()).collect();
    let mut answers: Vec<Option<GuardAnswer>> = asks.iter().map(|_| None).collect();
    session.release();
    let (placed, after) = holds::place_locked(session.store(), day, now, carried, &rows, |i, total, held| {
        let answer = (asks[i].decide)(total, held);
        let json = if answer.allowed { Some(serde_json::to_string(&answer)?) } else { None };
        answers[i] = Some(answer);
        Ok(json)
    })
    .await?;
    let out = placed
        .into_iter()
        .zip(answers)
        .map(|(p, a)| a.map(|a| (p, a)).ok_or_else(|| anyhow::anyhow!("a hold was not decided")))
        .collect::<anyhow::Result<_>>()?;
    Ok((out, Some(after)))
}
