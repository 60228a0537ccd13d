//! What Astra sends, as typed values: users, transfers, cards, token pairs. Timestamps with or without an
//! offset (no offset means UTC), dollars into exact cents, `cancelled` and `canceled` alike.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
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
    #[serde(default)]
    pub estimated_clearing_date: Option<NaiveDate>,
    pub status: TransferStatus,
    #[serde(default)]
    pub astra_settlement_reason: Option<String>,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

/// A page of `GET /v1/transfers`; items are parsed one by one, so one bad item does not sink the page.
#[derive(Debug, Deserialize)]
pub struct TransferPage {
    pub count: u64,
    pub transfers: Vec<serde_json::Value>,
}

/// Transfers read, and the items that did not parse (with the reason).
#[derive(Debug, Default)]
pub struct Listing {
    pub transfers: Vec<Transfer>,
    pub rejected: Vec<String>,
}

/// Parses one listed transfer, naming it in the error.
pub fn parse_transfer(v: serde_json::Value) -> Result<Transfer, String> {
    let id = v.get("id").and_then(|i| i.as_str()).unwrap_or("(no id)").to_string();
    serde_json::from_value(v).map_err(|e| format!("transfer {id}: {e}"))
}

/// A card as `GET /v1/cards` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Card {
    pub id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    pub status: String,
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
        .map_err(|_| format!("invalid timestamp `{s}`"))
}

/// Writes a timestamp the way Astra does: microseconds and an explicit UTC offset.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    parse_time(&s).map_err(serde::de::Error::custom)
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
    fn a_token_pair_prints_no_token() {
        let p: TokenPair = serde_json::from_str(
            r#"{"access_token":"acc-SECRET","refresh_token":"ref-SECRET","expires_in":7200,"token_type":"Bearer"}"#,
        )
        .unwrap();
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
    }
}
