//! Hostile input to every parser, generated (proptest): `jobs.toml` (any text, and the shipped file with one
//! value replaced), money, durations, schedules and time zones, Astra's timestamps and clearing dates, Astra's
//! transfer items (any JSON, and a real item with one field replaced), import lines of destinations and
//! grants, and webhook bodies. None panics; every refusal is a message that says what is wrong and stays short
//! (a value it echoes is cut).

use astra_worker::{
    astra::model::{Clearing, parse_time, parse_transfer},
    config::Settings,
    domain::{Cents, Schedule, time},
    inbox::Webhook,
    reconcile::registry,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::helpers::shipped_config;

/// Longer than any refusal needs: a message past it echoes a value whole.
const MESSAGE_MAX: usize = 600;

fn refusal_is_clear(e: &str) {
    assert!(!e.trim().is_empty(), "an empty refusal");
    let start: String = e.chars().take(200).collect();
    assert!(e.chars().count() <= MESSAGE_MAX, "a refusal of {} characters: {start}…", e.chars().count());
}

/// Any JSON value, nested a few levels deep, with strings that look like what Astra and people send.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,40}".prop_map(Value::String),
        // Long enough that an echo of it passes the bound, with the marks a parser message quotes values in.
        "[a-z` ]{1400,2000}".prop_map(Value::String),
        Just(json!("2020-09-17T15:12:04.746260")),
        Just(json!("1e400")),
        Just(json!("NaN")),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,20}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values a person or a broken system puts where a setting goes.
fn odd_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("\"300000y\"".to_string()),
        Just("\"100000000000y\"".to_string()),
        Just("nan".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
        "\\PC{0,30}".prop_map(|s| format!("\"{}\"", s.replace(['"', '\\'], ""))),
        any::<i64>().prop_map(|n| n.to_string()),
        "\\PC{0,30}",
    ]
}

fn a_transfer() -> Value {
    json!({
        "id": "t-1", "user_id": "u-1", "amount": "12.34", "status": "processed",
        "initiated": "2026-11-30T15:00:00Z", "updated": "2026-11-30T15:00:00Z",
        "estimated_clearing_date": "2020-09-17T15:12:04.746260",
        "source_id": "s-1", "destination_id": "d-1", "payment_type": "ach",
    })
}

fn a_grant_line() -> Value {
    json!({
        "user_id": "u-1", "access_token": "at_x", "refresh_token": "rt_x",
        "refresh_token_issued_at": "2026-11-30T15:00:00Z", "phone": "+15555550100",
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_text_as_jobs_toml_is_parsed_or_refused_clearly(text in "\\PC{0,400}") {
        if let Err(e) = Settings::parse(&text, None) {
            refusal_is_clear(&e);
        }
    }

    #[test]
    fn the_shipped_file_with_one_value_replaced_is_parsed_or_refused_naming_the_line(
        pick in any::<prop::sample::Index>(),
        value in odd_value(),
    ) {
        let shipped = std::fs::read_to_string(shipped_config()).unwrap();
        let settings: Vec<usize> = shipped
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim_start().starts_with('#') && l.contains(" = "))
            .map(|(i, _)| i)
            .collect();
        let at = settings[pick.index(settings.len())];
        let mut lines: Vec<String> = shipped.lines().map(str::to_string).collect();
        let key = lines[at].split(" = ").next().unwrap().trim().to_string();
        lines[at] = format!("{key} = {value}");
        if let Err(e) = Settings::parse(&lines.join("\n"), None) {
            refusal_is_clear(&e);
            // A value that breaks the syntax (an unclosed `{`) is refused where the parser stops: that line or one
            // after it.
            let line: Option<usize> = e.strip_prefix("line ").and_then(|r| r.split(',').next()?.parse().ok());
            let named = e.contains(&format!("{key} (line {})", at + 1))
                || e.contains(&format!("`{key}`"))
                || line.is_some_and(|l| l > at);
            prop_assert!(named, "`{key} = {value}` (line {}) refused without naming it or its line: {e}", at + 1);
        }
    }

    #[test]
    fn money_durations_schedules_and_zones_parse_or_refuse_clearly(text in "\\PC{0,60}", zone in "\\PC{0,30}") {
        match Cents::parse_dollars(&text) {
            Ok(c) => prop_assert!(c.0.unsigned_abs() <= 1_000_000_000_000, "{text} → {c:?}"),
            Err(e) => refusal_is_clear(&e.to_string()),
        }
        match time::parse_duration(&text) {
            Ok(d) => prop_assert!(d <= chrono::TimeDelta::days(3660), "{text} → {d:?}"),
            Err(e) => refusal_is_clear(&e),
        }
        if let Err(e) = Schedule::parse(&text, &zone) {
            refusal_is_clear(&e);
        }
        if let Err(e) = time::parse_zone(&zone) {
            refusal_is_clear(&e);
        }
        if let Err(e) = parse_time(&text) {
            refusal_is_clear(&e);
        }
        if let Err(e) = Clearing::parse(&text) {
            refusal_is_clear(&e);
        }
    }

    #[test]
    fn any_json_as_a_transfer_item_is_read_or_rejected_clearly(v in any_json()) {
        if let Err(r) = parse_transfer(v) {
            refusal_is_clear(&r.detail);
        }
    }

    #[test]
    fn a_transfer_item_with_one_field_replaced_is_read_or_rejected_naming_it(
        pick in any::<prop::sample::Index>(),
        value in any_json(),
    ) {
        let mut t = a_transfer();
        let fields: Vec<String> = t.as_object().unwrap().keys().cloned().collect();
        let field = &fields[pick.index(fields.len())];
        t[field.as_str()] = value;
        if let Err(r) = parse_transfer(t) {
            refusal_is_clear(&r.detail);
            let named = r.detail.contains(&format!("field `{field}`"));
            prop_assert!(named, "{field} refused without its name: {}", r.detail);
        }
    }

    #[test]
    fn any_bytes_as_an_import_line_or_a_webhook_body_are_read_or_refused_clearly(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Err(e) = registry::ImportLine::parse(&bytes) {
            refusal_is_clear(&e);
        }
        if let Err(e) = Webhook::parse(&bytes) {
            refusal_is_clear(&format!("{e:#}"));
        }
    }

    #[test]
    fn any_json_object_as_a_destination_grant_or_webhook_line_is_read_or_refused_clearly(
        v in any_json(),
        pick in any::<prop::sample::Index>(),
    ) {
        // Under each known key of each kind of line, so the field checks run, not only the JSON parser.
        let destination = json!({
            "destination_id": "d-1", "user_id": "u-1", "kind": "account",
            "bank_time_zone": "America/New_York", "daily_limit_cents": 250_000,
        });
        let webhook = json!({"webhook_id": "w-1", "webhook_type": "transfer_updated", "resource_id": "t-1"});
        for base in [destination, a_grant_line(), webhook] {
            let mut line = base.clone();
            let fields: Vec<String> = line.as_object().unwrap().keys().cloned().collect();
            line[fields[pick.index(fields.len())].as_str()] = v.clone();
            let bytes = line.to_string().into_bytes();
            if let Err(e) = registry::ImportLine::parse(&bytes) {
                refusal_is_clear(&e);
            }
            if let Err(e) = Webhook::parse(&bytes) {
                refusal_is_clear(&format!("{e:#}"));
            }
            if let Err(e) = astra_worker::tokens::ImportLine::parse_line(&bytes, chrono::Utc::now()) {
                refusal_is_clear(&e);
            }
        }
    }
}

/// A value a parser message echoes is cut whatever marks it holds. Found by the `import_lines` fuzz target: a
/// `kind` with backticks in it came back whole between them ("unknown variant `…`").
#[test]
fn a_value_with_backticks_in_it_is_never_echoed_by_a_refusal() {
    let secret = "tok-SECRET-0123456789";
    for kind in [format!("a`{secret}`b"), format!("{}{secret}`", "x`".repeat(400))] {
        let line = json!({
            "destination_id": "d-1", "user_id": "u-1", "kind": kind,
            "bank_time_zone": "America/New_York", "daily_limit_cents": 250_000,
        });
        let e = registry::ImportLine::parse(line.to_string().as_bytes()).unwrap_err();
        refusal_is_clear(&e);
        assert!(!e.contains("SECRET") && e.contains("field `kind`"), "{e}");
    }
}

/// A listed transfer holding a NUL character is refused (PostgreSQL cannot store it, and would fail the whole
/// read), and an id that is no id is not read from an item refused: the day it leaves uncertain is found
/// without it.
#[test]
fn a_transfer_item_holding_a_nul_is_refused_and_its_id_read_only_when_it_is_one() {
    let mut t = a_transfer();
    t["payment_type"] = json!("ach\u{0}");
    let r = parse_transfer(t).expect_err("a NUL in a field");
    assert_eq!(r.id.as_deref(), Some("t-1"));
    assert!(r.detail.contains("NUL"), "{}", r.detail);
    let mut t = a_transfer();
    t["id"] = json!("t-\u{0}-1");
    t["destination_id"] = json!("d\u{0}");
    let r = parse_transfer(t).expect_err("a NUL in the id");
    assert_eq!((r.id, r.destination_id), (None, None));
}
