//! Slots: the instants a job's cron expression and IANA zone define, computed in that zone so they stay right
//! across daylight-saving changes. A slot is identified by its UTC instant.
//!
//! Cron expressions have six fields, seconds first (an optional seventh is the year), as in
//! tokio-cron-scheduler; when both day-of-month and day-of-week are restricted a date must match both.
//! Daylight saving (croner's rules, checked by the tests below): a local time that does not exist on the
//! spring-forward day runs once, at the moment the gap ends (02:30 becomes 03:00 EDT); a local time that
//! occurs twice on the fall-back day runs once, at its first occurrence (01:30 EDT). So a daily job runs
//! exactly once per local day. croner alone also fires other jobs at the end of the gap (a 01:30 job a second
//! time at 03:00); [`Schedule::is_valid`] drops those.

use chrono::{DateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::{Cron, parser::CronParser, parser::Seconds};

use crate::secrets::shown;

#[derive(Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
    expr: String,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Schedule({:?} in {})", self.expr, self.zone.name())
    }
}

/// How far back to look for the latest slot before concluding there is none.
const LOOKBACK_YEARS: i64 = 5;
/// How many invalid croner candidates in a row to pass over before giving up.
const MAX_SKIPS: usize = 16;

impl Schedule {
    /// Parses a six-field cron expression in an IANA zone; refuses one that never fires.
    pub fn parse(expr: &str, zone: &str) -> Result<Schedule, String> {
        let zone: Tz = super::time::parse_zone(zone)?;
        let fields = expr.split_whitespace().count();
        if !(6..=7).contains(&fields) {
            return Err(format!(
                "cron expression {} has {fields} fields; six are needed, seconds first \
                 (e.g. \"0 0 3 * * Mon\" for Mondays at 03:00)",
                shown(expr)
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(expr)
            .map_err(|e| format!("invalid cron expression {}: {}", shown(expr), shown(&e.to_string())))?;
        let schedule = Schedule { cron, zone, expr: expr.to_string() };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(format!("cron expression {} never fires", shown(expr)));
        }
        Ok(schedule)
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Slots are whole seconds; a sub-second start would leak into the result.
        let mut from = trunc_seconds(t);
        for _ in 0..MAX_SKIPS {
            let local = from.with_timezone(&self.zone);
            let c = self.cron.find_next_occurrence(&local, false).ok()?.with_timezone(&Utc);
            if self.is_valid(c) {
                return Some(c);
            }
            from = c;
        }
        None
    }

    /// A croner candidate is a slot when its local time matches the expression, or when it is the end of a
    /// spring-forward gap that swallowed a matching local time.
    fn is_valid(&self, c: DateTime<Utc>) -> bool {
        let local = c.with_timezone(&self.zone);
        if self.cron.is_time_matching(&local).unwrap_or(false) {
            return true;
        }
        let before = (c - TimeDelta::seconds(1)).with_timezone(&self.zone);
        let gap = local.offset().fix().local_minus_utc() - before.offset().fix().local_minus_utc();
        if gap <= 0 {
            return false;
        }
        // Naive local times in [gap_start, gap_end) never happened; read them as if they were UTC.
        let gap_end = local.naive_local();
        let gap_start = gap_end - TimeDelta::seconds(i64::from(gap));
        let naive = Utc.from_utc_datetime(&gap_start);
        matches!(self.cron.find_next_occurrence(&naive, true), Ok(m) if m.naive_utc() < gap_end)
    }

    /// The latest slot at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let t = trunc_seconds(t);
        let floor = t - TimeDelta::days(365 * LOOKBACK_YEARS);
        let mut probe = t;
        for _ in 0..MAX_SKIPS {
            let local = probe.with_timezone(&self.zone);
            let prev = self.cron.find_previous_occurrence(&local, true).ok()?.with_timezone(&Utc);
            if prev < floor {
                return None;
            }
            // Settle on the forward rule (fall-back days, gap ends): the last forward slot at or before `t`.
            let mut best = self.is_valid(prev).then_some(prev);
            let mut next = self.next_after(prev);
            while let Some(n) = next.filter(|n| *n <= t) {
                best = Some(n);
                next = self.next_after(n);
            }
            if best.is_some() {
                return best;
            }
            probe = prev - TimeDelta::seconds(1);
        }
        None
    }

    /// Whether `t` is one of this schedule's slots.
    pub fn is_slot(&self, t: DateTime<Utc>) -> bool {
        self.latest_at_or_before(t) == Some(t)
    }

    /// Every slot in `(after, until]`, oldest first, at most `limit` of them.
    pub fn slots_between(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cur = after;
        while out.len() < limit {
            match self.next_after(cur) {
                Some(n) if n <= until => {
                    out.push(n);
                    cur = n;
                }
                _ => break,
            }
        }
        out
    }
}

fn trunc_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ny_daily(h: u32, m: u32) -> Schedule {
        Schedule::parse(&format!("0 {m} {h} * * *"), "America/New_York").unwrap()
    }

    /// All slots of a schedule whose local date is `day` (New York).
    fn slots_on(s: &Schedule, day: (i32, u32, u32)) -> Vec<DateTime<Utc>> {
        let from = utc(&format!("{:04}-{:02}-{:02}T00:00:00Z", day.0, day.1, day.2)) - TimeDelta::days(1);
        s.slots_between(from, from + TimeDelta::days(3), 10)
            .into_iter()
            .filter(|t| {
                let l = t.with_timezone(&chrono_tz::America::New_York).date_naive();
                l == chrono::NaiveDate::from_ymd_opt(day.0, day.1, day.2).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_0230_job_runs_once_on_spring_forward_day_just_after_the_gap() {
        // 2026-03-08: New York clocks jump from 02:00 EST to 03:00 EDT; 02:30 does not exist.
        let s = ny_daily(2, 30);
        assert_eq!(slots_on(&s, (2026, 3, 8)), vec![utc("2026-03-08T07:00:00Z")], "03:00 EDT");
        assert_eq!(slots_on(&s, (2026, 3, 7)), vec![utc("2026-03-07T07:30:00Z")], "02:30 EST");
        assert_eq!(slots_on(&s, (2026, 3, 9)), vec![utc("2026-03-09T06:30:00Z")], "02:30 EDT");
    }

    #[test]
    fn a_0130_job_runs_once_on_spring_forward_day() {
        let s = ny_daily(1, 30);
        assert_eq!(slots_on(&s, (2026, 3, 8)), vec![utc("2026-03-08T06:30:00Z")], "01:30 EST");
    }

    #[test]
    fn a_0130_job_runs_once_on_fall_back_day_at_the_first_0130() {
        // 2026-11-01: 01:00-02:00 happens twice (EDT, then EST).
        let s = ny_daily(1, 30);
        assert_eq!(slots_on(&s, (2026, 11, 1)), vec![utc("2026-11-01T05:30:00Z")], "01:30 EDT");
        assert_eq!(slots_on(&s, (2026, 11, 2)), vec![utc("2026-11-02T06:30:00Z")], "01:30 EST");
    }

    #[test]
    fn a_0230_job_runs_once_on_fall_back_day() {
        let s = ny_daily(2, 30);
        assert_eq!(slots_on(&s, (2026, 11, 1)), vec![utc("2026-11-01T07:30:00Z")], "02:30 EST");
        assert_eq!(slots_on(&s, (2026, 10, 31)), vec![utc("2026-10-31T06:30:00Z")], "02:30 EDT");
    }

    #[test]
    fn the_latest_slot_agrees_with_forward_iteration_across_both_changes() {
        for s in [ny_daily(1, 30), ny_daily(2, 30)] {
            let from = utc("2026-03-06T00:00:00Z");
            let all = s.slots_between(from, utc("2026-03-11T00:00:00Z"), 100);
            let mut t = from;
            while t < utc("2026-03-11T00:00:00Z") {
                let expect = all.iter().rev().find(|x| **x <= t).copied();
                if expect.is_some() {
                    assert_eq!(s.latest_at_or_before(t), expect, "{s:?} at {t}");
                }
                t += TimeDelta::minutes(15);
            }
            let from = utc("2026-10-30T00:00:00Z");
            let all = s.slots_between(from, utc("2026-11-04T00:00:00Z"), 100);
            let mut t = from;
            while t < utc("2026-11-04T00:00:00Z") {
                let expect = all.iter().rev().find(|x| **x <= t).copied();
                if expect.is_some() {
                    assert_eq!(s.latest_at_or_before(t), expect, "{s:?} at {t}");
                }
                t += TimeDelta::minutes(15);
            }
        }
    }

    #[test]
    fn the_latest_slot_includes_the_instant_itself() {
        let s = Schedule::parse("0 0 3 * * Mon", "Europe/Berlin").unwrap();
        let slot = chrono_tz::Europe::Berlin.with_ymd_and_hms(2026, 11, 16, 3, 0, 0).unwrap().with_timezone(&Utc);
        assert_eq!(s.latest_at_or_before(slot), Some(slot));
        assert!(s.is_slot(slot));
        assert!(!s.is_slot(slot + TimeDelta::seconds(1)));
        assert_eq!(s.latest_at_or_before(slot + TimeDelta::days(6)), Some(slot));
        assert_eq!(s.next_after(slot), Some(slot + TimeDelta::days(7)));
    }

    #[test]
    fn slots_are_whole_seconds_whatever_the_start() {
        let s = ny_daily(2, 30);
        let t = utc("2026-11-20T12:00:00.590795696Z");
        assert_eq!(s.next_after(t), Some(utc("2026-11-21T07:30:00Z")));
        assert!(s.slots_between(t - TimeDelta::days(5), t, 10).iter().all(|x| x.timestamp_subsec_nanos() == 0));
    }

    #[test]
    fn bad_expressions_are_refused_with_a_reason() {
        assert!(Schedule::parse("0 3 * * *", "UTC").unwrap_err().contains("six are needed"));
        assert!(Schedule::parse("0 0 25 * * *", "UTC").unwrap_err().contains("invalid cron"));
        assert!(Schedule::parse("0 0 3 * * *", "Mars/Olympus").unwrap_err().contains("unknown time zone"));
        assert!(Schedule::parse("0 0 0 30 2 *", "UTC").unwrap_err().contains("never fires"));
    }
}
