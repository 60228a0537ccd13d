//! No secret in any output, on both stores: every job at `RUST_LOG=trace` while Astra fails, loses refresh
//! answers and spoils bodies (half a token answer is the body most likely to be echoed), then the error paths
//! (a wrong token key, import lines that carry tokens in bad JSON, unknown keys and bad ids), `grants list` and
//! `check-config`. Neither stdout nor stderr holds any token the sandbox ever issued, a token from the import
//! file, the client secret, a token key or the database password; only `token` prints a token, on stdout,
//! and only the live access token.

use std::process::{Command, Output};

use astra_worker::{
    astra::TransferStatus,
    sandbox::{Faults, SandboxSettings},
};
use chrono::{TimeDelta, Utc};

use crate::{
    astra::add_transfer,
    both_backends,
    helpers::{Backend, KEY_A, KEY_B, TestApp, b64, bin, text},
};

const CLIENT_SECRET: &str = "cs-sweep-0a1b2c3d4e5f60718293";
const DB_PASSWORD: &str = "db-sweep-9f8e7d6c5b4a";

async fn output(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
}

async fn no_secret_reaches_any_output(b: Backend) {
    let sandbox = SandboxSettings { client_secret: CLIENT_SECRET.into(), seed: 5, ..Default::default() };
    let rig = TestApp::new(b, sandbox, |_| {}).await;
    // PostgreSQL here trusts loopback, so a password in the URL is ignored by the server and kept by the worker.
    let url = match b {
        Backend::Sqlite => rig.db.url.clone(),
        Backend::Postgres => {
            let mut u = reqwest::Url::parse(&rig.db.url).unwrap();
            u.set_password(Some(DB_PASSWORD)).unwrap();
            u.to_string()
        }
    };
    let store = rig.db.store().await;
    let users = rig.seed(&store, 40, |i| TimeDelta::days(if i % 2 == 0 { 8 } else { 1 })).await;
    {
        let mut s = rig.sandbox.state();
        for (i, u) in users.iter().enumerate() {
            add_transfer(
                &mut s,
                &format!("sw{i:02}"),
                u,
                1_000 + i as i64,
                Utc::now(),
                TransferStatus::Processed,
                None,
            );
        }
    }
    store.close().await;
    let cmd = |key: &[u8; 32]| {
        let mut c = bin(&url);
        c.env("ASTRA_BASE_URL", rig.sandbox.base_url())
            .env("ASTRA_CLIENT_ID", "sandbox-client")
            .env("ASTRA_CLIENT_SECRET", CLIENT_SECRET)
            .env("ASTRA_WORKER_TOKEN_KEY", b64(key))
            .env("ASTRA_WORKER_TOKEN_KEY_PREVIOUS", b64(&KEY_B))
            .env("RUST_LOG", "trace");
        c
    };
    rig.sandbox.set_faults(Faults {
        error_rate: 0.2,
        lost_refresh_rate: 0.1,
        malformed_rate: 0.25,
        hang_rate: 0.02,
        hang_ms: 600,
        ..Default::default()
    });
    let mut outputs = Vec::new();
    for args in [&["--run-once", "all"][..], &["--run-once", "all", "--force"], &["--run-once", "all", "--force"]] {
        let mut c = cmd(&KEY_A);
        c.args(args);
        outputs.push(output(c).await);
    }
    rig.sandbox.set_faults(Faults::default());
    // `token` for users until one whose grant came through the storm alive.
    let mut printed = false;
    for u in &users {
        let mut c = cmd(&KEY_A);
        c.args(["token", u]);
        let token = output(c).await;
        if token.status.code() == Some(0) {
            let live = rig.sandbox.state().grant_info(u).unwrap().access_token;
            assert_eq!(text(&token.stdout), format!("{live}\n"), "`token` prints the live access token alone");
            // The one token printed on purpose is among those looked for below.
            assert!(rig.sandbox.state().issued_tokens.contains(&live));
            outputs.push(Output { stdout: Vec::new(), ..token });
            printed = true;
            break;
        }
        outputs.push(token);
    }
    assert!(printed, "some grant came through the storm alive");
    let mut c = cmd(&KEY_B);
    c.args(["token", &users[2]]);
    outputs.push(output(c).await);

    // Import lines that carry tokens wherever a careless error message would quote them.
    let file_tokens: Vec<String> = (0..5).map(|i| format!("rt_file_{i}_5e1f0c2a9b8d7e6f")).collect();
    let lines = [
        format!(r#"{{"user_id": "f0", "access_token": "{}", "refresh_token": "{}""#, file_tokens[0], file_tokens[1]),
        format!(r#"{{"user_id": "f1", "refresh_token": "{}", "refresh_tokn": "{}"}}"#, file_tokens[2], file_tokens[3]),
        format!(r#"{{"user_id": "f\u0000", "access_token": "x", "refresh_token": "{}"}}"#, file_tokens[4]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grants.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut c = cmd(&KEY_A);
    c.args(["grants", "import"]).arg(&file);
    let import = output(c).await;
    assert_eq!(import.status.code(), Some(1), "every line is rejected: {}", text(&import.stderr));
    outputs.push(import);
    for args in [&["grants", "list", "--format", "json"][..], &["check-config"]] {
        let mut c = cmd(&KEY_A);
        c.args(args);
        outputs.push(output(c).await);
    }

    let logs: String = outputs.iter().map(|o| text(&o.stdout) + &text(&o.stderr)).collect();
    assert!(logs.contains("astra call"), "trace logs were produced");
    assert!(logs.contains("refresh_tokn"), "the unknown key is named");
    let spoiled = rig.sandbox.state().spoiled_token_answers.len();
    assert!(spoiled > 0, "some token answers were lost or spoiled");
    let mut secrets: Vec<String> = rig.sandbox.state().issued_tokens.clone();
    assert!(secrets.len() > users.len() * 2, "refreshes issued new tokens");
    secrets.extend(file_tokens);
    secrets.extend([CLIENT_SECRET.to_string(), b64(&KEY_A), b64(&KEY_B)]);
    if b == Backend::Postgres {
        secrets.push(DB_PASSWORD.to_string());
    }
    // Not only whole: any 16 characters of a secret (half a token from a truncated body counts).
    for s in &secrets {
        let chars: Vec<char> = s.chars().collect();
        for piece in chars.windows(16.min(chars.len())).step_by(4) {
            let piece: String = piece.iter().collect();
            if let Some(i) = logs.find(&piece) {
                let before: String = logs[..i].chars().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect();
                panic!("part of a secret reached the output after: {before}");
            }
        }
    }
    eprintln!(
        "secrets_sweep: {} bytes of output, {} secrets looked for, {spoiled} answers spoiled",
        logs.len(),
        secrets.len()
    );
}
both_backends!(no_secret_reaches_any_output_even_under_faults, super::no_secret_reaches_any_output);
