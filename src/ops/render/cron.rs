//! Our six-field cron expressions (seconds first, day-of-month AND day-of-week) rewritten for systemd's
//! `OnCalendar=` and for Kubernetes' five-field `schedule`. What either cannot say faithfully is refused.

const DOW: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];

struct Fields<'a> {
    sec: &'a str,
    min: &'a str,
    hour: &'a str,
    dom: &'a str,
    mon: &'a str,
    dow: &'a str,
}

fn fields(expr: &str) -> Result<Fields<'_>, String> {
    let f: Vec<&str> = expr.split_whitespace().collect();
    match f.as_slice() {
        [sec, min, hour, dom, mon, dow] => Ok(Fields { sec, min, hour, dom, mon, dow }),
        [.., year] if f.len() == 7 && *year != "*" => Err(format!("`{expr}`: a year field cannot be rendered")),
        [sec, min, hour, dom, mon, dow, _] => Ok(Fields { sec, min, hour, dom, mon, dow }),
        _ => Err(format!("`{expr}`: six fields expected")),
    }
}

fn unsupported(field: &str) -> Option<char> {
    field.chars().find(|c| matches!(c, '?' | 'L' | 'W' | '#'))
}

/// One field of a list for systemd: `*/n` → `start/n`, `a-b` → `a..b`; names mapped by `name`.
fn systemd_part(part: &str, start: &str, name: &dyn Fn(&str) -> Result<String, String>) -> Result<String, String> {
    if let Some(step) = part.strip_prefix("*/") {
        return Ok(format!("{start}/{step}"));
    }
    if part.contains('/') {
        let (base, step) = part.split_once('/').unwrap_or((part, ""));
        if base.contains('-') {
            return Err(format!("`{part}`: a stepped range cannot be rendered for systemd"));
        }
        return Ok(format!("{}/{step}", name(base)?));
    }
    if let Some((a, b)) = part.split_once('-') {
        return Ok(format!("{}..{}", name(a)?, name(b)?));
    }
    name(part)
}

fn systemd_field(field: &str, start: &str, name: &dyn Fn(&str) -> Result<String, String>) -> Result<String, String> {
    if field == "*" {
        return Ok("*".into());
    }
    field.split(',').map(|p| systemd_part(p, start, name)).collect::<Result<Vec<_>, _>>().map(|v| v.join(","))
}

fn number(s: &str) -> Result<String, String> {
    s.parse::<u32>().map(|n| format!("{n:02}")).map_err(|_| format!("`{s}` is not a number"))
}

fn month(s: &str) -> Result<String, String> {
    if let Some(i) = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(s)) {
        return Ok(format!("{:02}", i + 1));
    }
    number(s)
}

fn weekday(s: &str) -> Result<String, String> {
    if let Some(d) = DOW.iter().find(|d| d.eq_ignore_ascii_case(&s[..s.len().min(3)]) && s.len() == 3) {
        return Ok((*d).to_string());
    }
    match s.parse::<usize>() {
        Ok(n) if n <= 7 => Ok(DOW[n % 7].to_string()),
        _ => Err(format!("`{s}` is not a day of the week")),
    }
}

/// `0 0 3 * * Mon` in America/New_York → `Mon *-*-* 03:00:00 America/New_York`.
pub(crate) fn to_oncalendar(expr: &str, zone: &str) -> Result<String, String> {
    let f = fields(expr)?;
    for field in [f.sec, f.min, f.hour, f.dom, f.mon, f.dow] {
        if let Some(c) = unsupported(field) {
            return Err(format!("`{expr}`: `{c}` cannot be rendered for systemd; write OnCalendar= by hand"));
        }
    }
    let date = format!("*-{}-{}", systemd_field(f.mon, "01", &month)?, systemd_field(f.dom, "01", &number)?);
    let time = format!(
        "{}:{}:{}",
        systemd_field(f.hour, "00", &number)?,
        systemd_field(f.min, "00", &number)?,
        systemd_field(f.sec, "00", &number)?
    );
    let dow = if f.dow == "*" { String::new() } else { format!("{} ", systemd_field(f.dow, "Sun", &weekday)?) };
    Ok(format!("{dow}{date} {time} {zone}"))
}

/// `0 0 3 * * Mon` → `0 3 * * Mon` (Kubernetes fires at minute resolution and ORs day-of-month with
/// day-of-week, so a seconds field other than one number, or both days restricted, is refused).
pub(crate) fn to_kubernetes(expr: &str) -> Result<String, String> {
    let f = fields(expr)?;
    if f.sec.parse::<u32>().is_err() {
        return Err(format!(
            "`{expr}`: Kubernetes CronJobs fire at minute resolution; the seconds field must be one number"
        ));
    }
    if f.dom != "*" && f.dow != "*" {
        return Err(format!(
            "`{expr}`: Kubernetes fires when day-of-month OR day-of-week matches; this schedule needs both"
        ));
    }
    for field in [f.min, f.hour, f.dom, f.mon, f.dow] {
        if let Some(c) = unsupported(field) {
            return Err(format!("`{expr}`: `{c}` cannot be rendered for Kubernetes"));
        }
    }
    Ok(format!("{} {} {} {} {}", f.min, f.hour, f.dom, f.mon, f.dow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_schedules_render_for_systemd_in_their_zone() {
        let z = "America/New_York";
        assert_eq!(to_oncalendar("0 0 3 * * Mon", z).unwrap(), "Mon *-*-* 03:00:00 America/New_York");
        assert_eq!(to_oncalendar("0 5 0 * * *", z).unwrap(), "*-*-* 00:05:00 America/New_York");
        assert_eq!(to_oncalendar("*/2 * * * * *", "UTC").unwrap(), "*-*-* *:*:00/2 UTC");
        assert_eq!(
            to_oncalendar("0 30 9 1,15 JAN-MAR 1-5", z).unwrap(),
            "Mon..Fri *-01..03-01,15 09:30:00 America/New_York"
        );
        assert!(to_oncalendar("0 0 0 L * *", z).is_err());
    }

    #[test]
    fn kubernetes_gets_five_fields_or_a_reason() {
        assert_eq!(to_kubernetes("0 0 3 * * Mon").unwrap(), "0 3 * * Mon");
        assert!(to_kubernetes("*/2 * * * * *").unwrap_err().contains("minute resolution"));
        assert!(to_kubernetes("0 0 3 1 * Mon").unwrap_err().contains("OR"));
    }
}
