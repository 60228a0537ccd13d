//! Bank days: `[local midnight, next local midnight)` in the bank's zone, so 23 or 25 hours long on
//! daylight-saving days. A transfer counts toward the bank day its `initiated` time falls in.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankDay {
    pub zone: Tz,
    pub date: NaiveDate,
}

impl BankDay {
    /// The bank day `t` falls in.
    pub fn of(zone: Tz, t: DateTime<Utc>) -> BankDay {
        BankDay { zone, date: t.with_timezone(&zone).date_naive() }
    }

    /// The first instant of the day: local midnight (or, where midnight is skipped, the first local time after).
    pub fn start(&self) -> DateTime<Utc> {
        local_start_of(self.zone, self.date)
    }

    /// The first instant of the next day.
    pub fn end(&self) -> DateTime<Utc> {
        local_start_of(self.zone, self.date.succ_opt().unwrap_or(NaiveDate::MAX))
    }

    pub fn length(&self) -> TimeDelta {
        self.end() - self.start()
    }

    pub fn previous(&self) -> BankDay {
        BankDay { zone: self.zone, date: self.date.pred_opt().unwrap_or(NaiveDate::MIN) }
    }

    /// `YYYY-MM-DD`, as stored.
    pub fn key(&self) -> String {
        self.date.format("%Y-%m-%d").to_string()
    }
}

fn local_start_of(zone: Tz, date: NaiveDate) -> DateTime<Utc> {
    let mut local = date.and_time(NaiveTime::MIN);
    // A zone that skips midnight (DST at 00:00) starts the day at the first local time that exists.
    for _ in 0..4 {
        if let Some(t) = zone.from_local_datetime(&local).earliest() {
            return t.with_timezone(&Utc);
        }
        local += TimeDelta::minutes(30);
    }
    zone.from_utc_datetime(&local).with_timezone(&Utc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::{Chicago, New_York};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn dst_days_are_23_and_25_hours_long_in_new_york_and_chicago() {
        for zone in [New_York, Chicago] {
            let spring = BankDay { zone, date: NaiveDate::from_ymd_opt(2026, 3, 8).unwrap() };
            let fall = BankDay { zone, date: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap() };
            let plain = BankDay { zone, date: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap() };
            assert_eq!(spring.length(), TimeDelta::hours(23), "{zone}");
            assert_eq!(fall.length(), TimeDelta::hours(25), "{zone}");
            assert_eq!(plain.length(), TimeDelta::hours(24), "{zone}");
            assert_eq!(spring.end(), spring.date.succ_opt().map(|d| BankDay { zone, date: d }.start()).unwrap());
        }
        assert_eq!(
            BankDay { zone: New_York, date: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap() }.start(),
            utc("2026-11-01T04:00:00Z")
        );
        assert_eq!(
            BankDay { zone: Chicago, date: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap() }.end(),
            utc("2026-11-02T06:00:00Z")
        );
    }

    #[test]
    fn the_last_millisecond_and_local_midnight_fall_on_different_days() {
        for (zone, midnight) in [(New_York, "2026-11-02T05:00:00Z"), (Chicago, "2026-11-02T06:00:00Z")] {
            let m = utc(midnight);
            let before = BankDay::of(zone, m - TimeDelta::milliseconds(1));
            let at = BankDay::of(zone, m);
            assert_eq!(before.date, NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
            assert_eq!(at.date, NaiveDate::from_ymd_opt(2026, 11, 2).unwrap());
            assert_eq!(before.end(), at.start());
        }
        // During the repeated hour of the fall-back day, both 01:30s belong to Nov 1.
        assert_eq!(BankDay::of(New_York, utc("2026-11-01T05:30:00Z")).key(), "2026-11-01");
        assert_eq!(BankDay::of(New_York, utc("2026-11-01T06:30:00Z")).key(), "2026-11-01");
    }

    #[test]
    fn a_zone_that_skips_midnight_starts_its_day_at_the_first_local_time() {
        // America/Santiago skipped 00:00-01:00 on 2024-09-08.
        let z: Tz = "America/Santiago".parse().unwrap();
        let d = BankDay { zone: z, date: NaiveDate::from_ymd_opt(2024, 9, 8).unwrap() };
        assert_eq!(d.start().with_timezone(&z).format("%H:%M").to_string(), "01:00");
        assert_eq!(d.length(), TimeDelta::hours(23));
    }
}
