//! Money as integer cents. Astra's JSON carries dollars (`4.99`); they become cents exactly or are refused.
//! A float never holds money here: the dollar text is read digit by digit.

use serde::{Deserialize, Deserializer, Serialize};

use crate::secrets::shown;

/// An amount in integer cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cents(pub i64);

/// The largest amount accepted from Astra: ten billion dollars.
pub const MAX_CENTS: i64 = 1_000_000_000_000;

/// Why an amount was refused; the amount is shown cut (see [`shown`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount {} is not a decimal number of dollars", shown(.0))]
    NotANumber(String),
    #[error("amount {} has more than two decimals", shown(.0))]
    SubCent(String),
    #[error("amount {} is negative", shown(.0))]
    Negative(String),
    #[error("amount {} is beyond any plausible transfer", shown(.0))]
    Absurd(String),
}

impl Cents {
    /// Parses a dollar amount written in decimal (`"12.99"`, `"0.1"`, `"100"`, `"1e2"`), exactly.
    pub fn parse_dollars(text: &str) -> Result<Cents, MoneyError> {
        let t = text.trim();
        let bad = || MoneyError::NotANumber(text.to_string());
        let (neg, body) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        // Scientific notation from JSON serializers: mantissa and exponent.
        let (mantissa, exp) = match body.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i32>().map_err(|_| bad())?),
            None => (body, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        // digits * 10^(exp - frac.len()) dollars = digits * 10^(exp - frac.len() + 2) cents
        let digits = format!("{int}{frac}");
        let digits = digits.trim_start_matches('0');
        // In i64: an exponent near i32's bounds, or a long fraction, must not overflow.
        let shift = i64::from(exp) - i64::try_from(frac.len()).map_err(|_| bad())? + 2;
        let cents: i128 = if digits.is_empty() {
            0
        } else if shift >= 0 {
            if i64::try_from(digits.len()).map_err(|_| bad())? + shift > 15 {
                return Err(MoneyError::Absurd(text.to_string()));
            }
            digits.parse::<i128>().map_err(|_| bad())? * 10i128.pow(shift as u32)
        } else {
            let cut = usize::try_from(-shift).map_err(|_| bad())?;
            let (keep, drop) = digits.split_at(digits.len().saturating_sub(cut));
            let dropped_zeros = drop.bytes().all(|b| b == b'0') && digits.len() >= cut;
            if !dropped_zeros {
                return Err(MoneyError::SubCent(text.to_string()));
            }
            if keep.is_empty() { 0 } else { keep.parse::<i128>().map_err(|_| bad())? }
        };
        if cents > i128::from(MAX_CENTS) {
            return Err(MoneyError::Absurd(text.to_string()));
        }
        if neg && cents != 0 {
            return Err(MoneyError::Negative(text.to_string()));
        }
        Ok(Cents(cents as i64))
    }

    /// The dollar text Astra would write: `1299` → `"12.99"`.
    pub fn to_dollars(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        format!("{sign}{}.{:02}", a / 100, a % 100)
    }

    /// As a JSON number of dollars (for the sandbox's responses).
    pub fn to_json_dollars(self) -> serde_json::Value {
        serde_json::from_str(&self.to_dollars()).unwrap_or(serde_json::Value::Null)
    }
}

impl std::fmt::Display for Cents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "${}", self.to_dollars())
    }
}

/// Serde: a JSON number (or numeric string) of dollars into [`Cents`], exactly.
pub fn dollars<'de, D: Deserializer<'de>>(d: D) -> Result<Cents, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let text = match &v {
        // serde_json prints a float's shortest round-trip form, which is the decimal Astra wrote.
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => return Err(serde::de::Error::custom(MoneyError::NotANumber(other.to_string()))),
    };
    Cents::parse_dollars(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dollars_become_exact_cents() {
        assert_eq!(Cents::parse_dollars("12.99"), Ok(Cents(1299)));
        assert_eq!(Cents::parse_dollars("0.1"), Ok(Cents(10)));
        assert_eq!(Cents::parse_dollars("100"), Ok(Cents(10000)));
        assert_eq!(Cents::parse_dollars("4.50"), Ok(Cents(450)));
        assert_eq!(Cents::parse_dollars("1e2"), Ok(Cents(10000)));
        assert_eq!(Cents::parse_dollars("1.5E1"), Ok(Cents(1500)));
        assert_eq!(Cents::parse_dollars("0.070"), Ok(Cents(7)));
        assert_eq!(Cents::parse_dollars(".5"), Ok(Cents(50)));
    }

    #[test]
    fn bad_amounts_are_refused_with_the_reason() {
        assert_eq!(Cents::parse_dollars("4.999"), Err(MoneyError::SubCent("4.999".into())));
        assert_eq!(Cents::parse_dollars("-3.00"), Err(MoneyError::Negative("-3.00".into())));
        assert_eq!(Cents::parse_dollars("NaN"), Err(MoneyError::NotANumber("NaN".into())));
        assert_eq!(Cents::parse_dollars("12,99"), Err(MoneyError::NotANumber("12,99".into())));
        assert_eq!(Cents::parse_dollars(""), Err(MoneyError::NotANumber("".into())));
        assert!(matches!(Cents::parse_dollars("1e30"), Err(MoneyError::Absurd(_))));
        assert!(matches!(Cents::parse_dollars("99999999999999"), Err(MoneyError::Absurd(_))));
    }

    #[test]
    fn exponents_at_the_bounds_of_i32_are_refused_without_overflow() {
        assert!(matches!(Cents::parse_dollars("1e2147483647"), Err(MoneyError::Absurd(_))));
        assert!(matches!(Cents::parse_dollars("1.5e-2147483648"), Err(MoneyError::SubCent(_))));
        assert!(matches!(Cents::parse_dollars("-1e2147483647"), Err(MoneyError::Absurd(_))));
        assert_eq!(Cents::parse_dollars("0e2147483647"), Ok(Cents(0)));
        assert_eq!(Cents::parse_dollars("100e-2147483648"), Err(MoneyError::SubCent("100e-2147483648".into())));
    }

    #[test]
    fn json_numbers_of_dollars_deserialize_exactly() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "dollars")]
            amount: Cents,
        }
        let t: T = serde_json::from_str(r#"{"amount": 0.29}"#).unwrap();
        assert_eq!(t.amount, Cents(29));
        let t: T = serde_json::from_str(r#"{"amount": 1234567.89}"#).unwrap();
        assert_eq!(t.amount, Cents(123456789));
        assert!(serde_json::from_str::<T>(r#"{"amount": "abc"}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"amount": null}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"amount": 0.001}"#).is_err());
    }

    proptest! {
        #[test]
        fn any_cent_amount_round_trips_through_json_dollars(c in 0i64..MAX_CENTS) {
            let json = Cents(c).to_json_dollars();
            #[derive(Deserialize)]
            struct T { #[serde(deserialize_with = "dollars")] amount: Cents }
            let t: T = serde_json::from_value(serde_json::json!({ "amount": json })).unwrap();
            prop_assert_eq!(t.amount, Cents(c));
        }
    }
}
