//! What Astra sends, as typed values: users, transfers, cards, token pairs. Timestamps with or without an
//! offset (no offset means UTC), dollars into exact cents, `cancelled` and `canceled` alike.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::money::{Cents, dollars};

/// A token pair from `POST /v1/oauth/token`. `Debug` prints no token.
#[derive(Debug, Deserialize)]
pub struct TokenPair {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    /// Seconds the access token lives.
    pub expires_in: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Approved,
    Pending,
    Retry,
    Document,
    Suspended,
    Rejected,
    ConvertedToUser,
}

impl UserStatus {
    const ALL: [UserStatus; 7] = [
        UserStatus::Approved,
        UserStatus::Pending,
        UserStatus::Retry,
        UserStatus::Document,
        UserStatus::Suspended,
        UserStatus::Rejected,
        UserStatus::ConvertedToUser,
    ];

    pub fn parse(s: &str) -> Option<UserStatus> {
        UserStatus::ALL.into_iter().find(|u| u.as_str() == s)
    }

    /// Suspended or rejected: never prompted to authorize again (they get a follow-up instead), and the guard
    /// denies their routine requests.
    pub fn is_barred(self) -> bool {
        matches!(self, UserStatus::Suspended | UserStatus::Rejected)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Approved => "approved",
            UserStatus::Pending => "pending",
            UserStatus::Retry => "retry",
            UserStatus::Document => "document",
            UserStatus::Suspended => "suspended",
            UserStatus::Rejected => "rejected",
            UserStatus::ConvertedToUser => "converted_to_user",
        }
    }
}

/// `GET /v1/user`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub status: UserStatus,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    Pending,
    Processed,
    #[serde(alias = "canceled")]
    Cancelled,
    Failed,
}

impl TransferStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Pending => "pending",
            TransferStatus::Processed => "processed",
            TransferStatus::Cancelled => "cancelled",
            TransferStatus::Failed => "failed",
        }
    }
}

/// A transfer as `GET /v1/transfers` and `GET /v1/transfers/{id}` return it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    pub id: String,
    #[serde(default)]
    pub routine_id: Option<String>,
    #[serde(default)]
    pub routine_type: Option<String>,
    /// The integrator's own id, set when the routine was created (the guard's hold key, when it made one).
    #[serde(default)]
    pub client_correlation_id: Option<String>,
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default)]
    pub destination_id: Option<String>,
    #[serde(default)]
    pub destination_user_id: Option<String>,
    #[serde(deserialize_with = "dollars")]
    pub amount: Cents,
    #[serde(default)]
    pub payment_type: Option<String>,
    #[serde(deserialize_with = "timestamp")]
    pub initiated: DateTime<Utc>,
    #[serde(default, deserialize_with = "opt_timestamp")]
    pub updated: Option<DateTime<Utc>>,
    /// A date-time in Astra's spec (`"2020-09-17T15:12:04.746260"`), a bare date in some answers: both read.
    #[serde(default, deserialize_with = "opt_clearing")]
    pub estimated_clearing_date: Option<Clearing>,
    pub status: TransferStatus,
    #[serde(default)]
    pub astra_settlement_reason: Option<String>,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

/// When Astra expects a transfer to clear: an instant, or (in some answers) only a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Clearing {
    At(DateTime<Utc>),
    On(NaiveDate),
}

impl Clearing {
    /// Parses a date-time (with or without an offset) or a bare `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Clearing, String> {
        if let Ok(d) = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
            return Ok(Clearing::On(d));
        }
        parse_time(s).map(Clearing::At).map_err(|_| format!("invalid clearing date {}", crate::secrets::shown(s)))
    }

    /// Whether the clearing date has passed at `now`, judged in the bank's zone: an instant has passed once
    /// it is behind `now`; a date once the bank's day is past it.
    pub fn has_passed(self, now: DateTime<Utc>, bank_zone: Tz) -> bool {
        match self {
            Clearing::At(t) => t < now,
            Clearing::On(d) => d < now.with_timezone(&bank_zone).date_naive(),
        }
    }

    /// As stored: the date, or the instant in RFC 3339.
    pub fn to_text(self) -> String {
        match self {
            Clearing::At(t) => t.to_rfc3339(),
            Clearing::On(d) => d.format("%Y-%m-%d").to_string(),
        }
    }
}

/// A page of `GET /v1/transfers`; items are parsed one by one, so one bad item does not sink the page.
#[derive(Debug, Deserialize)]
pub struct TransferPage {
    pub count: u64,
    pub transfers: Vec<serde_json::Value>,
}

/// Transfers read, the items that did not parse, and whether the listing stopped before the window's end.
#[derive(Debug, Default)]
pub struct Listing {
    pub transfers: Vec<Transfer>,
    pub rejected: Vec<Rejected>,
    /// The page cap was reached before an item older than the window: the listing is incomplete.
    pub truncated: bool,
}

/// A listed item that did not parse, with what could be read of it (to know which day it leaves uncertain).
#[derive(Debug, Clone)]
pub struct Rejected {
    pub id: Option<String>,
    pub destination_id: Option<String>,
    pub initiated: Option<DateTime<Utc>>,
    pub detail: String,
}

/// Parses one listed transfer; an item that does not parse is returned with what could be read of it.
pub fn parse_transfer(v: serde_json::Value) -> Result<Transfer, Rejected> {
    let text = |k: &str| v.get(k).and_then(|i| i.as_str()).map(str::to_string);
    // An id that is no id (empty, over-long, a control character such as the NUL PostgreSQL refuses) is not
    // read: the item is one without a readable id.
    let id = |k: &str| text(k).filter(|s| crate::secrets::check_id(k, s).is_ok());
    let (id, destination_id) = (id("id"), id("destination_id"));
    let initiated = text("initiated").and_then(|t| parse_time(&t).ok());
    let named = id.as_deref().map(crate::secrets::shown).unwrap_or("(no id)".into());
    if holds_nul(&v) {
        let detail = format!("transfer {named}: a field holds a NUL character, which the store cannot keep");
        return Err(Rejected { detail, id, destination_id, initiated });
    }
    crate::secrets::from_json_value(v).map_err(|e| Rejected {
        detail: format!("transfer {named}: {e}"),
        id,
        destination_id,
        initiated,
    })
}

/// Whether any string in `v` (a key included) holds a NUL, which PostgreSQL refuses to store in text.
fn holds_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(holds_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// A card as `GET /v1/cards` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Card {
    pub id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub push_enabled: Option<bool>,
    #[serde(default)]
    pub pull_enabled: Option<bool>,
    #[serde(default)]
    pub last_four_digits: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CardList {
    pub cards: Vec<Card>,
}

/// Parses an Astra timestamp: RFC 3339 with an offset, or without one (then it is UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .map(|n| n.and_utc())
        .map_err(|_| format!("invalid timestamp {}", crate::secrets::shown(s)))
}

/// Writes a timestamp the way Astra does: microseconds and an explicit UTC offset.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    parse_time(&s).map_err(serde::de::Error::custom)
}

fn opt_clearing<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Clearing>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => Clearing::parse(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

fn opt_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_time(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_with_and_without_an_offset() {
        let with = parse_time("2025-03-15T03:20:33.010178+00:00").unwrap();
        assert_eq!(with.timestamp_subsec_micros(), 10178);
        let without = parse_time("2020-09-15T15:12:04.746260").unwrap();
        assert_eq!(without, parse_time("2020-09-15T15:12:04.746260Z").unwrap());
        let shifted = parse_time("2025-03-15T03:20:33-05:00").unwrap();
        assert_eq!(shifted, parse_time("2025-03-15T08:20:33Z").unwrap());
        assert!(parse_time("15/03/2025").is_err());
        assert_eq!(parse_time(&format_time(with)).unwrap(), with);
    }

    #[test]
    fn a_transfer_parses_with_both_spellings_of_cancelled() {
        let body = |status: &str| {
            format!(r#"{{"id":"t1","amount":12.99,"initiated":"2020-09-15T15:12:04.746260","status":"{status}"}}"#)
        };
        let t: Transfer = serde_json::from_str(&body("canceled")).unwrap();
        assert_eq!(t.status, TransferStatus::Cancelled);
        assert_eq!(t.amount, Cents(1299));
        let t: Transfer = serde_json::from_str(&body("cancelled")).unwrap();
        assert_eq!(t.status, TransferStatus::Cancelled);
        assert!(serde_json::from_str::<Transfer>(&body("teleported")).is_err());
    }

    #[test]
    fn a_clearing_date_is_read_as_astra_publishes_it_and_as_a_bare_date() {
        let body = |clearing: &str| {
            format!(
                r#"{{"id":"t1","amount":1,"initiated":"2020-09-15T15:12:04.746260","status":"pending",
                    "client_correlation_id":"hold-1","estimated_clearing_date":{clearing}}}"#
            )
        };
        let t: Transfer = serde_json::from_str(&body(r#""2020-09-17T15:12:04.746260""#)).unwrap();
        let at = parse_time("2020-09-17T15:12:04.746260Z").unwrap();
        assert_eq!(t.estimated_clearing_date, Some(Clearing::At(at)));
        assert_eq!(t.client_correlation_id.as_deref(), Some("hold-1"));
        let t: Transfer = serde_json::from_str(&body(r#""2020-09-17""#)).unwrap();
        let day = NaiveDate::from_ymd_opt(2020, 9, 17).unwrap();
        assert_eq!(t.estimated_clearing_date, Some(Clearing::On(day)));
        let t: Transfer = serde_json::from_str(&body("null")).unwrap();
        assert_eq!(t.estimated_clearing_date, None);
        assert!(serde_json::from_str::<Transfer>(&body(r#""next week""#)).is_err());
    }

    #[test]
    fn a_clearing_date_passes_in_the_bank_zone_not_in_utc() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let day = Clearing::On(NaiveDate::from_ymd_opt(2026, 11, 20).unwrap());
        // 02:00 UTC on the 21st is still the 20th in New York: not passed there, though it is in UTC.
        let now = parse_time("2026-11-21T02:00:00Z").unwrap();
        assert!(!day.has_passed(now, ny));
        assert!(day.has_passed(now, chrono_tz::UTC));
        assert!(day.has_passed(parse_time("2026-11-21T05:00:00Z").unwrap(), ny));
        let at = Clearing::At(parse_time("2026-11-21T01:00:00Z").unwrap());
        assert!(at.has_passed(now, ny));
    }

    #[test]
    fn a_token_pair_prints_no_token() {
        let p: TokenPair = serde_json::from_str(
            r#"{"access_token":"acc-SECRET","refresh_token":"ref-SECRET","expires_in":7200,"token_type":"Bearer"}"#,
        )
        .unwrap();
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
    }
}
