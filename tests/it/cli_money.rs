//! Black-box tests of the money commands: `accounts import` with bad lines, `guard` exit codes (0 allowed,
//! 1 denied, 78 bad input), `users block`, `cards freeze`.

use std::process::Command;

use crate::helpers::{KEY_A, b64, bin, text};

fn cmd(db: &str) -> Command {
    let mut c = bin(db);
    c.env("ASTRA_WORKER_TOKEN_KEY", b64(&KEY_A));
    c
}

#[test]
fn guard_answers_json_with_exit_0_allowed_1_denied_and_refuses_bad_input_with_78() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("w.db").display());
    let grants = dir.path().join("g.jsonl");
    std::fs::write(
        &grants,
        r#"{"user_id":"u1","access_token":"at_1","refresh_token":"rt_1","refresh_token_issued_at":"2026-11-20T00:00:00Z"}
{"user_id":"u2","access_token":"at_2","refresh_token":"rt_2","refresh_token_issued_at":"2026-11-20T00:00:00Z"}"#,
    )
    .unwrap();
    assert_eq!(cmd(&db).args(["grants", "import"]).arg(&grants).status().unwrap().code(), Some(0));
    let accounts = dir.path().join("a.jsonl");
    std::fs::write(
        &accounts,
        [
            r#"{"destination_id":"acct-1","user_id":"u1","kind":"account","bank_time_zone":"America/New_York","daily_limit_cents":250000}"#,
            r#"{"destination_id":"card-2","user_id":"u2","kind":"card","bank_time_zone":"America/Chicago","daily_limit_cents":100000}"#,
            r#"{"destination_id":"acct-3","user_id":"u3","kind":"account","bank_time_zone":"Mars/Olympus","daily_limit_cents":1}"#,
            r#"{"destination_id":"acct-4","user_id":"u4","kind":"account","bank_time_zone":"UTC","daily_limit_cents":"lots"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let o = cmd(&db).args(["accounts", "import"]).arg(&accounts).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "some lines were rejected");
    let err = text(&o.stderr);
    assert!(err.contains("line 3") && err.contains("unknown time zone `Mars/Olympus`"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(text(&o.stdout).contains("2 lines, 2 rejected"));

    let guard = |args: &[&str]| {
        let o = cmd(&db).arg("guard").args(args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        (o.status.code(), v, text(&o.stderr))
    };
    let (code, v, _) = guard(&["--user", "u1", "--amount", "2500.00"]);
    assert_eq!((code, v["allowed"].as_bool()), (Some(0), Some(true)), "{v}");
    assert_eq!(v["headroom_cents"], 0);
    let (code, v, _) = guard(&["--user", "u1", "--amount", "2500.01"]);
    assert_eq!((code, v["reason"].as_str()), (Some(1), Some("daily_limit")), "{v}");
    assert!(v["block_lifts_at"].as_str().is_some());

    assert_eq!(cmd(&db).args(["cards", "freeze", "card-2"]).status().unwrap().code(), Some(0));
    let (code, v, _) = guard(&["--user", "u2", "--amount", "1", "--destination", "card-2"]);
    assert_eq!((code, v["reason"].as_str()), (Some(1), Some("card_frozen")));
    assert_eq!(cmd(&db).args(["cards", "unfreeze", "card-2"]).status().unwrap().code(), Some(0));
    assert_eq!(guard(&["--user", "u2", "--amount", "1", "--destination", "card-2"]).0, Some(0));

    assert_eq!(cmd(&db).args(["users", "block", "u2", "--reason", "chargebacks"]).status().unwrap().code(), Some(0));
    let (code, v, _) = guard(&["--user", "u2", "--amount", "1"]);
    assert_eq!(
        (code, v["reason"].as_str(), v["detail"].as_str()),
        (Some(1), Some("user_blocked"), Some("chargebacks"))
    );

    for bad in ["12.345", "-5", "ten"] {
        let (code, _, err) = guard(&["--user", "u1", "--amount", bad]);
        assert_eq!(code, Some(78), "{bad}: {err}");
        assert!(err.contains("--amount"), "{err}");
    }
    assert_eq!(cmd(&db).args(["cards", "freeze", "nope"]).status().unwrap().code(), Some(78));
    // The database unreachable: an error status of 2 or more, never 1 ("denied").
    let o = cmd("postgres://postgres@127.0.0.1:1/x").args(["guard", "--user", "u1", "--amount", "1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(75));
}

#[test]
fn users_block_refuses_an_id_or_reason_that_would_block_nobody_and_warns_of_an_unknown_user() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("w.db").display());
    let block =
        |user: &str, reason: &str| cmd(&db).args(["users", "block", user, "--reason", reason]).output().unwrap();
    for (user, reason, named) in
        [("", "fraud", "user_id is empty"), ("a\u{1}b", "fraud", "control character"), ("u1", " ", "reason")]
    {
        let o = block(user, reason);
        assert_eq!(o.status.code(), Some(78), "{user:?}/{reason:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(named), "{}", text(&o.stderr));
    }
    let accounts = dir.path().join("a.jsonl");
    let line =
        r#"{"destination_id":"acct-1","user_id":"u1","kind":"account","bank_time_zone":"UTC","daily_limit_cents":100}"#;
    std::fs::write(&accounts, line).unwrap();
    assert_eq!(cmd(&db).args(["accounts", "import"]).arg(&accounts).status().unwrap().code(), Some(0));
    let grants = dir.path().join("g.jsonl");
    let issued = chrono::Utc::now().to_rfc3339();
    let line = format!(
        r#"{{"user_id":"u1","access_token":"at_1","refresh_token":"rt_1","refresh_token_issued_at":"{issued}"}}"#
    );
    std::fs::write(&grants, line).unwrap();
    assert_eq!(cmd(&db).args(["grants", "import"]).arg(&grants).status().unwrap().code(), Some(0));
    let guard = || {
        let o = cmd(&db).args(["guard", "--user", "u1", "--amount", "0.01"]).output().unwrap();
        (o.status.code(), serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap())
    };
    assert_eq!(guard().0, Some(0), "the refused block with an empty reason stored nothing");

    let o = block("u1", "fraud review");
    assert_eq!(o.status.code(), Some(0));
    assert!(!text(&o.stderr).contains("check the id"), "u1 is known: {}", text(&o.stderr));
    // A mistyped id is blocked all the same (a block may precede the grant), and said to be unknown.
    let o = block("u1 ", "fraud review");
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("no grant or destination of this user is stored"), "{}", text(&o.stderr));
    let (code, v) = guard();
    assert_eq!((code, v["reason"].as_str()), (Some(1), Some("user_blocked")), "{v}");
}
