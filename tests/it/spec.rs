//! The sandbox answers in the shapes of Astra's published OpenAPI (`tests/fixtures/astra-openapi-excerpt.json`,
//! verbatim): every field the spec documents has its type, format and enum; the only other fields are the
//! ones public client code observes in live answers.

use astra_worker::{
    astra::TransferStatus,
    sandbox::{CardRec, ClearingFormat, CountSemantics, Sandbox, SandboxSettings},
};
use chrono::{TimeDelta, Utc};
use serde_json::Value;

use crate::astra::add_transfer;

fn spec() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/astra-openapi-excerpt.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The object schema of an operation's 200 answer (ReadMe's export wraps some arrays in `schema`).
fn response_schema<'a>(spec: &'a Value, path: &str, method: &str) -> &'a Value {
    &spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
}

fn items_of(array_prop: &Value) -> &Value {
    let a = if array_prop.get("schema").is_some_and(|s| !s.is_null()) { &array_prop["schema"] } else { array_prop };
    &a["items"]
}

/// Astra's date-times: RFC 3339, or without an offset (UTC).
fn is_date_time(s: &str) -> bool {
    astra_worker::astra::model::parse_time(s).is_ok()
}

/// Checks one answered object against an object schema; `observed` are the fields seen in live answers that
/// the spec leaves out.
fn conforms(what: &str, v: &Value, schema: &Value, observed: &[&str]) {
    let props = schema["properties"].as_object().unwrap_or_else(|| panic!("{what}: no properties in the spec"));
    let obj = v.as_object().unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    for (k, val) in obj {
        let Some(p) = props.get(k) else {
            assert!(observed.contains(&k.as_str()), "{what}: field `{k}` is neither in the spec nor observed");
            continue;
        };
        // ReadMe's export wraps some property schemas in `schema`.
        let p = if p.get("type").is_none() && p.get("schema").is_some_and(|s| !s.is_null()) { &p["schema"] } else { p };
        let ok = match p["type"].as_str() {
            Some("string") => val.is_string(),
            Some("integer") => val.is_i64() || val.is_u64(),
            Some("number") => val.is_number(),
            Some("array") => val.is_array(),
            Some("object") => val.is_object(),
            other => panic!("{what}.{k}: unexpected spec type {other:?}"),
        };
        assert!(ok, "{what}.{k}: {val} is not a {}", p["type"]);
        if p["format"] == "date-time" {
            assert!(is_date_time(val.as_str().unwrap()), "{what}.{k}: `{val}` is not a date-time");
        }
        if let Some(allowed) = p["enum"].as_array() {
            assert!(allowed.contains(val), "{what}.{k}: {val} is not one of {allowed:?}");
        }
    }
}

async fn get(sb: &Sandbox, path: &str, access: &str) -> Value {
    let r = reqwest::Client::new().get(format!("{}{path}", sb.base_url())).bearer_auth(access).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_sandbox_answers_in_the_shapes_of_astras_published_spec() {
    let spec = spec();
    for (count, clearing) in
        [(CountSemantics::Page, ClearingFormat::DateTime), (CountSemantics::Total, ClearingFormat::Date)]
    {
        let sb = Sandbox::start_local(SandboxSettings {
            count_semantics: count,
            clearing_format: clearing,
            ..Default::default()
        })
        .await
        .unwrap();
        let now = Utc::now();
        let g = sb.state().add_approved_user("u1", Some("+15555550100".into()), now);
        for (i, status) in
            [TransferStatus::Pending, TransferStatus::Processed, TransferStatus::Failed].into_iter().enumerate()
        {
            let at = now - TimeDelta::minutes(i as i64);
            add_transfer(&mut sb.state(), &format!("t{i}"), "u1", 1234, at, status, None);
        }
        sb.state().add_card(CardRec {
            id: "c1".into(),
            user_id: "u1".into(),
            status: "approved".into(),
            push_enabled: true,
            pull_enabled: true,
            frozen: false,
        });

        let user = get(&sb, "/v1/user", &g.access_token).await;
        conforms("GET /v1/user", &user, response_schema(&spec, "/v1/user", "get"), &[]);

        let list_schema = response_schema(&spec, "/v1/transfers", "get");
        let page = get(&sb, "/v1/transfers?limit=2&offset=0", &g.access_token).await;
        conforms("GET /v1/transfers", &page, list_schema, &[]);
        let want_count = if count == CountSemantics::Page { 2 } else { 3 };
        assert_eq!(page["count"], want_count, "{count:?}");
        let observed = ["astra_settlement_reason", "failure_reason", "destination_user_id"];
        for t in page["transfers"].as_array().unwrap() {
            let mut t = t.clone();
            if clearing == ClearingFormat::Date {
                // The other reading the sandbox can play: a bare date where the spec says date-time.
                let d = t.as_object_mut().unwrap().remove("estimated_clearing_date").unwrap();
                assert!(chrono::NaiveDate::parse_from_str(d.as_str().unwrap(), "%Y-%m-%d").is_ok(), "{d}");
            }
            conforms("a listed transfer", &t, items_of(&list_schema["properties"]["transfers"]), &observed);
        }
        let filtered = get(&sb, "/v1/transfers?status=failed", &g.access_token).await;
        assert_eq!(filtered["transfers"].as_array().unwrap().len(), 1, "the status filter");
        let one = get(&sb, "/v1/transfers/t0", &g.access_token).await;
        let clearing_text = one["estimated_clearing_date"].as_str().unwrap().to_string();
        if clearing == ClearingFormat::DateTime {
            conforms("GET /v1/transfers/{id}", &one, response_schema(&spec, "/v1/transfers/{id}", "get"), &observed);
        }
        match clearing {
            ClearingFormat::DateTime => assert!(clearing_text.contains('T'), "{clearing_text}"),
            ClearingFormat::Date => assert_eq!(clearing_text.len(), 10, "{clearing_text}"),
        }

        let cards = get(&sb, "/v1/cards", &g.access_token).await;
        let cards_schema = response_schema(&spec, "/v1/cards", "get");
        conforms("GET /v1/cards", &cards, cards_schema, &[]);
        for c in cards["cards"].as_array().unwrap() {
            conforms(
                "a listed card",
                c,
                items_of(&cards_schema["properties"]["cards"]),
                &["status", "push_enabled", "pull_enabled"],
            );
        }
    }
}

#[tokio::test]
async fn the_sandbox_never_answers_a_user_intent_status_for_a_user() {
    let sb = Sandbox::start_local(SandboxSettings::default()).await.unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/_sandbox/users", sb.base_url()))
        .json(&serde_json::json!({"id": "u9", "status": "converted_to_user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
