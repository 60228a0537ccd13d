//! Time zones by IANA name, the one way instants are written for people (whole seconds, UTC, `Z`), and
//! durations read from text with a sane upper bound.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use crate::secrets::shown;

/// The zone parsed from an IANA name.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone {} (expected an IANA name such as America/New_York)", shown(name)))
}

/// `2026-11-20T05:00:00Z`: how logs, listings and reports write an instant.
pub fn utc_seconds(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The longest duration any setting accepts: ten years.
pub const MAX_DURATION: TimeDelta = TimeDelta::days(3653);

/// Parses `"20s"`, `"48h"`, `"7d"`, `"1h 30m"`; refuses what does not parse and anything over ten years.
pub fn parse_duration(text: &str) -> Result<TimeDelta, String> {
    let too_long = || format!("duration {} is longer than the ten years any setting allows", shown(text));
    // humantime's own message echoes an unknown unit whole: only what kind of fault it is is said.
    let std = humantime::parse_duration(text.trim()).map_err(|e| {
        let what = match e {
            humantime::DurationError::NumberOverflow => return too_long(),
            humantime::DurationError::UnknownUnit { .. } => "an unknown unit",
            humantime::DurationError::NumberExpected(_) => "a number expected",
            humantime::DurationError::InvalidCharacter(_) => "an invalid character",
            humantime::DurationError::Empty => "empty",
        };
        format!("invalid duration {} ({what}); write e.g. \"20s\", \"48h\", \"7d\"", shown(text))
    })?;
    match TimeDelta::from_std(std) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(too_long()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_absurd_ones_are_refused_by_name() {
        assert_eq!(parse_duration("90s"), Ok(TimeDelta::seconds(90)));
        assert_eq!(parse_duration("7d"), Ok(TimeDelta::days(7)));
        for absurd in ["300000y", "100000000000y", "11y"] {
            let e = parse_duration(absurd).unwrap_err();
            assert!(e.contains("ten years") && e.contains(absurd), "{e}");
        }
        assert!(parse_duration("soon").unwrap_err().contains("invalid duration `soon`"));
    }

    #[test]
    fn instants_are_written_in_whole_utc_seconds() {
        let t = DateTime::parse_from_rfc3339("2026-11-20T00:05:00.123-05:00").unwrap().with_timezone(&Utc);
        assert_eq!(utc_seconds(t), "2026-11-20T05:05:00Z");
    }
}
