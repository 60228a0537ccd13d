//! Black-box tests of the built binary: exit codes, logs, signals, and two processes on one slot.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Output, Stdio},
};

use crate::{
    both_backends,
    helpers::{BIN, Backend, TestDb, bin, bin_with, shipped_config, text},
};

/// The binary with the shipped config and the test hooks on.
fn cmd(db_url: &str) -> Command {
    let mut c = bin(db_url);
    c.env("ASTRA_WORKER_TEST_HOOKS", "1");
    c
}

fn cmd_with(db_url: &str, config: &Path) -> Command {
    let mut c = bin_with(db_url, config);
    c.env("ASTRA_WORKER_TEST_HOOKS", "1");
    c
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

#[test]
fn the_shipped_config_passes_check_config_and_shows_three_slots_per_job() {
    let o = cmd("sqlite::memory:").arg("check-config").output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for job in [
        "token-rotation",
        "inbound-volume",
        "transfer-sync",
        "reprocessing-check",
        "stale-authorization-sweep",
        "retention",
    ] {
        assert!(out.contains(job), "{out}");
    }
    assert_eq!(out.matches("Z\n").count(), 18, "three slots for each of six jobs, in UTC too:\n{out}");
}

#[test]
fn check_config_shows_astras_url_without_its_password() {
    let o = cmd("sqlite::memory:")
        .env("ASTRA_BASE_URL", "http://user:pw1234secret@127.0.0.1:9/")
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout) + &text(&o.stderr);
    assert!(out.contains("astra: http://user:***@127.0.0.1:9/"), "{out}");
    assert!(!out.contains("pw1234secret"), "{out}");
}

#[test]
fn each_kind_of_bad_config_exits_78_naming_the_key() {
    let shipped = std::fs::read_to_string(shipped_config()).unwrap();
    let cases = [
        ("enabled = true\nschedule = \"0 0 3 * * Mon\"", "enabled = true\nshedule = \"0 0 3 * * Mon\"", "shedule"),
        ("\"0 0 3 * * Mon\"", "\"0 3 * * Mon\"", "jobs.token-rotation.schedule"),
        ("time_zone = \"America/New_York\"", "time_zone = \"Nowhere/Land\"", "jobs.token-rotation.time_zone"),
        ("requests_per_second = 20", "requests_per_second = -1", "requests_per_second"),
        ("claim_lease = \"2m\"", "claim_lease = \"soon\"", "soon"),
        // Claims kept no longer than token-rotation's 7-day catch-up would let it run a slot again.
        ("job_runs = \"90d\"", "job_runs = \"7d\"", "jobs.retention.settings.job_runs"),
        ("hold_for = \"1h\"", "hold_for = \"8d\"", "guard.hold_for"),
        // Holds forgotten while one of 7 days could still be open.
        ("holds = \"30d\"", "holds = \"7d\"", "jobs.retention.settings.holds"),
        ("webhooks = \"14d\"", "webhooks = \"2h\"", "jobs.retention.settings.webhooks"),
        ("header_timeout = \"75s\"", "header_timeout = \"0s\"", "service.header_timeout"),
        ("body_timeout = \"30s\"", "body_timeout = \"11m\"", "service.body_timeout"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (from, to, named) in cases {
        let path = dir.path().join("jobs.toml");
        std::fs::write(&path, shipped.replacen(from, to, 1)).unwrap();
        let o = cmd_with("sqlite::memory:", &path).arg("check-config").output().unwrap();
        assert_eq!(code(&o), 78, "{to}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(named), "{to}: {}", text(&o.stderr));
        let o = cmd_with("sqlite::memory:", &path).args(["--run-once", "all"]).output().unwrap();
        assert_eq!(code(&o), 78, "--run-once with {to}");
    }
    let o = cmd_with("sqlite::memory:", Path::new("/nonexistent/jobs.toml")).arg("check-config").output().unwrap();
    assert_eq!(code(&o), 78);
    assert!(text(&o.stderr).contains("/nonexistent/jobs.toml"));
}

#[test]
fn an_unknown_job_name_exits_78() {
    let o = cmd("sqlite::memory:").args(["--run-once", "token-rotate"]).output().unwrap();
    assert_eq!(code(&o), 78);
    assert!(text(&o.stderr).contains("unknown job `token-rotate`"), "{}", text(&o.stderr));
}

#[test]
fn an_unreachable_database_exits_75_and_names_it_without_the_password() {
    let o = cmd("postgres://postgres:hunter2@127.0.0.1:1/astra").args(["--run-once", "test-hold"]).output().unwrap();
    assert_eq!(code(&o), 75, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2") && !text(&o.stdout).contains("hunter2"), "password leaked: {err}");
}

#[test]
fn a_read_only_sqlite_database_exits_78_and_keeps_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.db");
    let rw = format!("sqlite://{}", file.display());
    let o = cmd(&rw).args(["--run-once", "test-hold"]).output().unwrap();
    assert_eq!(code(&o), 0);
    let ro = format!("sqlite://{}?mode=ro", file.display());
    let o = cmd(&ro).args(["--run-once", "test-hold", "--force"]).output().unwrap();
    assert_eq!(code(&o), 78, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("readonly"), "{}", text(&o.stderr));
    let o = cmd(&rw).args(["runs", "--format", "json"]).output().unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "the first run is still recorded");
}

#[test]
fn a_run_exits_0_and_logs_json_start_and_end_lines_with_run_id_job_and_slot() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let o = cmd(&url).args(["--run-once", "test-hold"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let lines: Vec<serde_json::Value> =
        text(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("every stdout line is JSON")).collect();
    let find = |msg: &str| lines.iter().find(|l| l["message"] == msg).unwrap_or_else(|| panic!("no `{msg}` line"));
    for line in [find("run started"), find("run finished")] {
        let span = &line["span"];
        assert_eq!(span["job"], "test-hold");
        assert!(span["run_id"].as_str().is_some_and(|s| s.len() == 36));
        assert!(span["slot"].as_str().is_some_and(|s| s.ends_with(":00Z")));
    }
    let end = find("run finished");
    assert_eq!(end["outcome"], "succeeded");
    assert_eq!(end["processed"], 3);
    assert!(end.get("requests").is_some() && end.get("rate_configured").is_some());

    // The same slot again: nothing to do, still exit 0.
    let o =
        cmd(&url).args(["--run-once", "test-hold", "--slot", end["span"]["slot"].as_str().unwrap()]).output().unwrap();
    assert_eq!(code(&o), 0);
    assert!(text(&o.stdout).contains("slot already ran"));
}

#[test]
fn sigterm_during_in_flight_work_finishes_it_records_interrupted_and_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let mut child = cmd(&url)
        .env("ASTRA_WORKER_TEST_HOLD_ITEMS", "50")
        .env("ASTRA_WORKER_TEST_HOLD_MS", "300")
        .args(["--run-once", "test-hold"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until an item is in flight, then send SIGTERM.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("holding an item in flight") {
        line.clear();
    }
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(75), "{rest}");

    let o = cmd(&url).args(["runs", "--format", "json"]).output().unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = &runs[0];
    assert_eq!(run["outcome"], "interrupted");
    let processed = run["processed"].as_i64().unwrap();
    assert!((1..50).contains(&processed), "the in-flight item finished, no new ones started: {run}");
    assert_eq!(processed + run["skipped"].as_i64().unwrap(), 50);

    // An interrupted slot is taken again without --force.
    let o = cmd(&url).args(["--run-once", "test-hold", "--slot", run["slot"].as_str().unwrap()]).output().unwrap();
    assert_eq!(code(&o), 0);
    assert!(text(&o.stdout).contains("\"outcome\":\"succeeded\""));
}

async fn two_processes_on_one_slot_do_the_work_once(b: Backend) {
    {
        let db = TestDb::new(b).await;
        db.store().await.close().await; // migrate first, so the race is about the claim
        let slot = "2026-11-20T08:00:00Z";
        let spawn = || {
            cmd(&db.url)
                .env("ASTRA_WORKER_TEST_HOLD_MS", "50")
                .args(["--run-once", "test-hold", "--slot", slot])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b2) = (spawn(), spawn());
        let (a, b2) = (a.wait_with_output().unwrap(), b2.wait_with_output().unwrap());
        assert_eq!((code(&a), code(&b2)), (0, 0));
        let both = text(&a.stdout) + &text(&b2.stdout);
        assert_eq!(both.matches("\"run started\"").count(), 1, "{both}");
        let store = db.store().await;
        let runs = astra_worker::store::ledger::list_runs(&store, None, 10).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].processed, 3);
    }
}
both_backends!(two_processes_on_one_slot_do_the_work_once, super::two_processes_on_one_slot_do_the_work_once);

#[test]
fn the_demo_runs_to_completion_and_reports_every_job() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let o = Command::new(BIN)
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(shipped_config())
        .args(["demo", "--users", "80", "--database"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for job in ["token-rotation", "stale-authorization-sweep", "inbound-volume", "reprocessing-check", "retention"] {
        assert!(out.contains(job), "{job} missing from the report:\n{out}");
    }
    assert!(out.contains("rotated"), "{out}");
    assert!(out.contains("suspended users prompted: 0"), "{out}");
    assert!(out.contains("reauthorization_prompt"), "{out}");
    // The store it leaves answers the commands the report suggests.
    let o = Command::new(BIN)
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .args(["runs", "--format", "json"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(runs.as_array().unwrap().iter().any(|r| r["job"] == "token-rotation" && r["outcome"] == "succeeded"));
}

#[test]
fn a_missing_secret_exits_78_naming_it_before_any_claim() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let o = cmd(&url).env_remove("ASTRA_WORKER_TOKEN_KEY").args(["--run-once", "token-rotation"]).output().unwrap();
    assert_eq!(code(&o), 78, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("missing secret ASTRA_CLIENT_ID"), "{}", text(&o.stderr));
    let o = cmd(&url).args(["runs", "--format", "json"]).output().unwrap();
    assert_eq!(text(&o.stdout).trim(), "[]", "nothing claimed, nothing recorded");
}

#[test]
fn serve_on_a_port_another_process_holds_exits_75_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = cmd("sqlite::memory:")
        .env("ASTRA_WORKER_API_KEY", "test-api-key-0123456789")
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(code(&o), 75, "try again later, not a bug: {}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&format!("listening on {addr}")), "{}", text(&o.stderr));
}

#[test]
fn an_in_memory_database_leaves_no_file_in_the_working_directory() {
    // sqlx names an in-memory database `file:sqlx-in-memory-N`; the migration lock once took that for a file
    // and left `file:sqlx-in-memory-0.migrate-lock` wherever the process ran.
    let dir = tempfile::tempdir().unwrap();
    let o = cmd("sqlite::memory:").current_dir(dir.path()).args(["runs", "--format", "json"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "[]", "the store was opened and migrated");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
