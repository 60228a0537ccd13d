//! A `--run-once` of a slot that already ran, as a CronJob or a timer firing twice starts it: the whole
//! process (start, open and migrate-check the store, find the slot done, exit): its wall time, and its peak
//! memory by `/usr/bin/time` (Debian's package `time`); the median of five.

use super::{Report, spawn_sandbox};

pub(super) fn bench(report: &mut Report) {
    let (mut sandbox, base) = spawn_sandbox();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("noop.db").display());
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|p| p.parent()).map(|p| p.join("astra-worker")).unwrap();
    let run = |timed: bool| {
        let mut c = if timed {
            let mut c = std::process::Command::new("/usr/bin/time");
            c.args(["-f", "%e %M"]).arg(&bin);
            c
        } else {
            std::process::Command::new(&bin)
        };
        c.args(["--config", concat!(env!("CARGO_MANIFEST_DIR"), "/jobs.toml"), "--run-once", "token-rotation"])
            .env("DATABASE_URL", &url)
            .env("ASTRA_BASE_URL", &base)
            .env("ASTRA_CLIENT_ID", "sandbox-client")
            .env("ASTRA_CLIENT_SECRET", "sandbox-secret")
            .env("ASTRA_WORKER_TOKEN_KEY", "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=")
            .env("RUST_LOG", "warn")
            .output()
    };
    assert!(run(false).unwrap().status.success(), "the slot's first run");
    let mut runs: Vec<(f64, u64)> = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let out = match run(true) {
            Ok(o) => o,
            Err(e) => {
                println!("no-op: /usr/bin/time is missing ({e}): apt-get install time");
                let _ = sandbox.kill();
                return;
            }
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let secs = t.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default().to_string();
        let kib: u64 = last.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        runs.push((secs, kib));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (secs, _) = runs[runs.len() / 2];
    let peak = runs.iter().map(|r| r.1).max().unwrap_or(0);
    report.row(
        "no-op",
        "`--run-once token-rotation` of a slot that already ran",
        "the release binary, a SQLite store, the shipped `jobs.toml`; wall time around the process, peak RSS from \
         `/usr/bin/time -f %M`; median of 5",
        format!("{:.0} ms wall, peak RSS {:.1} MiB", secs * 1e3, peak as f64 / 1024.0),
    );
    let _ = sandbox.kill();
}
