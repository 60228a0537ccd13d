//! Black-box tests of the token commands: import with bad lines, a rejected client (exit 78, nothing
//! changed), no token in logs at trace level or in the raw database files, `token`, a wrong key.

use std::{process::Command, sync::Arc};

use astra_worker::sandbox::{Sandbox, SandboxSettings};
use chrono::{TimeDelta, Utc};

use crate::helpers::{KEY_A, KEY_B, b64, bin, text};

struct Env {
    sandbox: Arc<Sandbox>,
    dir: tempfile::TempDir,
}

impl Env {
    fn db(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("w.db").display())
    }

    fn cmd(&self, secret: &str, key: &[u8; 32]) -> Command {
        let mut c = bin(&self.db());
        c.env("ASTRA_BASE_URL", self.sandbox.base_url())
            .env("ASTRA_CLIENT_ID", "sandbox-client")
            .env("ASTRA_CLIENT_SECRET", secret)
            .env("ASTRA_WORKER_TOKEN_KEY", b64(key));
        c
    }

    /// Every token the sandbox knows for the users, old and new.
    fn live_tokens(&self, users: &[String]) -> Vec<String> {
        let s = self.sandbox.state();
        users
            .iter()
            .flat_map(|u| {
                let g = s.grant_info(u).unwrap();
                [g.access_token, g.refresh_token]
            })
            .collect()
    }
}

async fn output(mut c: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_commands_keep_secrets_out_of_logs_and_files_and_refuse_bad_credentials() {
    let env = Env {
        sandbox: Arc::new(Sandbox::start_local(SandboxSettings::default()).await.unwrap()),
        dir: tempfile::tempdir().unwrap(),
    };
    let now = Utc::now();
    let mut lines = Vec::new();
    let mut users = Vec::new();
    for i in 0..30 {
        let id = format!("cli-user-{i:02}");
        let g = env.sandbox.state().add_approved_user(&id, None, now - TimeDelta::days(8));
        lines.push(
            serde_json::json!({
                "user_id": id, "access_token": g.access_token, "refresh_token": g.refresh_token,
                "refresh_token_issued_at": (now - TimeDelta::days(8)).to_rfc3339(),
            })
            .to_string(),
        );
        users.push(id);
    }
    let original_tokens = env.live_tokens(&users);
    lines.insert(
        2,
        r#"{"user_id": "no-refresh", "access_token": "at_x", "refresh_token_issued_at": "2026-11-20T00:00:00Z"}"#
            .into(),
    );
    lines.insert(5, "this is not json".into());
    let file = env.dir.path().join("grants.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();

    // Import: bad lines named by number and skipped, the rest imported, a non-zero exit.
    let mut c = env.cmd("sandbox-secret", &KEY_A);
    c.args(["grants", "import"]).arg(&file);
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("line 3:") && text(&o.stderr).contains("line 6:"), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("30 new"), "{}", text(&o.stdout));
    // Again: idempotent.
    let mut c = env.cmd("sandbox-secret", &KEY_A);
    c.args(["grants", "import"]).arg(&file);
    assert!(text(&output(c).await.stdout).contains("0 new, 0 replaced, 30 unchanged"));

    // A rejected client: exit 78, no grant touched.
    let mut c = env.cmd("wrong-secret", &KEY_A);
    c.args(["--run-once", "token-rotation"]);
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("invalid_client"), "{}", text(&o.stderr));
    assert!(users.iter().all(|u| env.sandbox.state().grant_info(u).unwrap().refreshes == 0));
    let mut c = env.cmd("sandbox-secret", &KEY_A);
    c.args(["grants", "list", "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&output(c).await.stdout).unwrap();
    assert!(listed.as_array().unwrap().iter().all(|g| g["token_version"] == 1 && g["status"] == "active"));

    // The real run at trace level: no token string in any log line.
    let mut c = env.cmd("sandbox-secret", &KEY_A);
    c.env("RUST_LOG", "trace").args(["--run-once", "token-rotation"]);
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(users.iter().all(|u| env.sandbox.state().grant_info(u).unwrap().refreshes == 1));
    let logs = text(&o.stdout) + &text(&o.stderr);
    assert!(logs.contains("astra call"), "trace logs were produced");
    let all_tokens: Vec<String> = original_tokens.into_iter().chain(env.live_tokens(&users)).collect();
    for t in &all_tokens {
        assert!(!logs.contains(t.as_str()), "a token reached the logs");
    }
    // Nor the raw database files.
    for f in std::fs::read_dir(env.dir.path()).unwrap() {
        let f = f.unwrap().path();
        if f.to_string_lossy().contains("w.db") {
            let bytes = std::fs::read(&f).unwrap();
            for t in &all_tokens {
                assert!(!bytes.windows(t.len()).any(|w| w == t.as_bytes()), "{} holds a token", f.display());
            }
        }
    }

    // `token` prints the live access token alone.
    let mut c = env.cmd("sandbox-secret", &KEY_A);
    c.args(["token", &users[3]]);
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), format!("{}\n", env.sandbox.state().grant_info(&users[3]).unwrap().access_token));

    // The call log, written in the background, holds every request each process sent before it exited.
    let store = astra_worker::store::Store::connect(&env.db()).await.unwrap();
    let logged: Vec<String> = crate::with_pool!(&store, |p| sqlx::query_scalar(
        "SELECT request_id FROM api_call WHERE request_id IS NOT NULL ORDER BY request_id"
    )
    .fetch_all(p)
    .await
    .unwrap());
    let sent = env.sandbox.state().calls.len();
    assert!(sent > users.len() * 2, "the rotation and `token` called Astra: {sent} calls");
    assert_eq!(logged.len(), sent, "one row per request Astra answered");

    // A wrong key or a key of the wrong length: exit 78 with a clear message, never garbage.
    let mut c = env.cmd("sandbox-secret", &KEY_B);
    c.args(["token", &users[3]]);
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o.stderr).contains("neither ASTRA_WORKER_TOKEN_KEY"), "{}", text(&o.stderr));
    let mut c = env.cmd("sandbox-secret", &KEY_A);
    c.env("ASTRA_WORKER_TOKEN_KEY", "c2hvcnQ=").args(["token", &users[3]]);
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o.stderr).contains("32 random bytes"), "{}", text(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_slot_against_postgres_refresh_each_due_grant_once() {
    let env = Env {
        sandbox: Arc::new(Sandbox::start_local(SandboxSettings::default()).await.unwrap()),
        dir: tempfile::tempdir().unwrap(),
    };
    let db = crate::helpers::TestDb::new(crate::helpers::Backend::Postgres).await;
    let store = db.store().await;
    let now = Utc::now();
    let mut users = Vec::new();
    for i in 0..300 {
        let id = format!("pg-user-{i:03}");
        let g = env.sandbox.state().add_approved_user(&id, None, now - TimeDelta::days(8));
        crate::helpers::import(&store, &id, &g.access_token, &g.refresh_token, now - TimeDelta::days(8), None).await;
        users.push(id);
    }
    env.sandbox.set_faults(astra_worker::sandbox::Faults { latency_ms: 3, ..Default::default() });
    let spawn = || {
        let mut c = env.cmd("sandbox-secret", &KEY_A);
        c.env("DATABASE_URL", &db.url).args(["--run-once", "token-rotation"]);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let children = [spawn(), spawn(), spawn()];
    let outs = tokio::task::spawn_blocking(move || children.map(|c| c.wait_with_output().unwrap())).await.unwrap();
    for o in &outs {
        let out = text(&o.stdout);
        let tail = &out[out.len().saturating_sub(3000)..];
        assert_eq!(o.status.code(), Some(0), "{}\n{tail}", text(&o.stderr));
    }
    let started: usize = outs.iter().map(|o| text(&o.stdout).matches("\"run started\"").count()).sum();
    assert!(started >= 1);
    for u in &users {
        assert_eq!(env.sandbox.state().grant_info(u).unwrap().refreshes, 1, "{u} refreshed exactly once");
    }
}
