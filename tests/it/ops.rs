//! Operations: the daemon (fast schedule, no overlap, SIGTERM drains and exits 0, shares slots with
//! `--run-once`), `render` equal to the committed files and valid for systemd and Kubernetes, `health`,
//! the metrics file.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use astra_worker::sandbox::{Sandbox, SandboxSettings};

use crate::helpers::{BIN, KEY_A, b64, bin, text};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn render(target: &str, out: &Path, bin: Option<&str>) {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(root().join("jobs.toml")).args(["render", target, "--out"]).arg(out);
    if let Some(b) = bin {
        c.args(["--bin", b]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

fn files(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e != "md"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn the_committed_deployment_files_are_what_render_produces_for_the_shipped_jobs_toml() {
    for (target, committed) in [("systemd", root().join("systemd")), ("kubernetes", root().join("deploy/kubernetes"))] {
        let dir = tempfile::tempdir().unwrap();
        render(target, dir.path(), None);
        let (want, have) = (files(dir.path()), files(&committed));
        let names = |v: &[(String, String)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&have),
            names(&want),
            "{target}: the committed files differ; run `astra-worker render {target}`"
        );
        for ((name, w), (_, h)) in want.iter().zip(&have) {
            assert_eq!(h, w, "{target}/{name} differs from `astra-worker render {target}`");
        }
    }
}

#[test]
fn systemd_verifies_the_units_and_rates_every_service_ok() {
    let dir = tempfile::tempdir().unwrap();
    render("systemd", dir.path(), Some(BIN));
    let units: Vec<String> = files(dir.path()).into_iter().map(|f| f.0).collect();
    let o = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect(
            "systemd-analyze (Debian package systemd) is needed: run the tests with scripts/test, which installs it",
        );
    assert!(o.status.success() && o.stderr.is_empty(), "verify: {}", text(&o.stderr));
    for unit in ["astra-worker.service", "astra-worker@.service", "astra-worker-serve.service"] {
        let o = Command::new("systemd-analyze")
            .current_dir(dir.path())
            .args(["security", "--offline=true", unit])
            .output()
            .unwrap();
        let out = text(&o.stdout);
        let verdict = out.lines().last().unwrap_or_default().to_string();
        assert!(verdict.contains(" OK ") || verdict.contains("SAFE"), "{unit}: {verdict}");
    }
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let manifests: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert_eq!(manifests.len(), 9, "a ConfigMap, six CronJobs, the service's Deployment and Service");
    let o = Command::new("kubernetes-validate")
        .args(["-k", "1.30.0", "--strict"])
        .args(&manifests)
        .output()
        .expect("kubernetes-validate (PyPI) is needed: run the tests with scripts/test, which installs it");
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let all: String = manifests.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    for must in [
        "concurrencyPolicy: Forbid",
        "timeZone: \"America/New_York\"",
        "values: [78]",
        "restartPolicy: Never",
        "readOnlyRootFilesystem: true",
        "kind: Deployment",
        "replicas: 2",
        "path: /readyz",
        "path: /healthz",
    ] {
        assert!(all.contains(must), "{must}");
    }
}

fn cmd(db: &str) -> Command {
    let mut c = bin(db);
    c.env("ASTRA_WORKER_TEST_HOOKS", "1");
    c
}

#[test]
fn health_names_stale_jobs_and_the_metrics_file_is_written_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("w.db").display());
    let o = cmd(&db).arg("health").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    for job in ["token-rotation", "inbound-volume", "reprocessing-check", "stale-authorization-sweep"] {
        assert!(text(&o.stderr).contains(job), "{}", text(&o.stderr));
    }
    // Record a success on every job's latest slot, as the runs would.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = astra_worker::store::Store::open(&db).await.unwrap();
        let settings = crate::helpers::shipped_settings(None);
        for job in &settings.jobs {
            let slot = job.schedule.latest_at_or_before(chrono::Utc::now()).unwrap();
            let run_id = format!("r-{}", job.name);
            let who = astra_worker::store::ledger::Claimant {
                run_id: &run_id,
                owner: "t",
                lease: chrono::TimeDelta::minutes(1),
                force: false,
            };
            astra_worker::store::ledger::claim(&store, job.name.as_str(), slot, &who).await.unwrap();
            let start = astra_worker::store::ledger::RunStart {
                run_id: &run_id,
                job: job.name.as_str(),
                slot,
                owner: "t",
                forced: false,
                rate_configured: 20,
            };
            astra_worker::store::ledger::start_run(&store, &start).await.unwrap();
            let counts = astra_worker::store::ledger::Counts { processed: 7, ..Default::default() };
            astra_worker::store::ledger::finish_run(
                &store,
                &run_id,
                astra_worker::store::ledger::Outcome::Succeeded,
                &counts,
                &serde_json::json!({}),
                None,
            )
            .await
            .unwrap();
        }
    });
    let o = cmd(&db).arg("health").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));
    let o = cmd(&db).args(["health", "--max-age", "token-rotation=1s"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("stale: token-rotation"), "{}", text(&o.stderr));

    let prom = dir.path().join("astra-worker.prom");
    let o = cmd(&db).args(["--run-once", "test-hold", "--metrics-file"]).arg(&prom).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let m = std::fs::read_to_string(&prom).unwrap();
    assert!(m.contains("astra_worker_last_success_timestamp_seconds{job=\"token-rotation\"}"), "{m}");
    assert!(m.contains("astra_worker_last_run_items{job=\"token-rotation\",result=\"processed\"} 7"), "{m}");
    assert!(m.contains("astra_worker_request_rate_limit 20"), "{m}");
    let o = cmd(&db).args(["--run-once", "test-hold", "--metrics-file", "/nonexistent/dir/m.prom"]).output().unwrap();
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o.stderr).contains("/nonexistent/dir/m.prom"));
    // A directory: refused at the start, and nothing is left beside it.
    let o = cmd(&db).args(["--run-once", "test-hold", "--metrics-file"]).arg(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("is a directory"), "{}", text(&o.stderr));
    let parent = dir.path().parent().unwrap();
    let stem = dir.path().file_name().unwrap().to_string_lossy().into_owned();
    let left = std::fs::read_dir(parent).unwrap().filter_map(Result::ok).filter(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.starts_with(&stem) && n != stem
    });
    assert_eq!(left.count(), 0, "no probe or temporary file beside the directory");
}

/// The shipped jobs.toml with fast schedules: rotation every 2 s (catch-up all), the sweep every 3 s.
fn fast_config(dir: &Path) -> PathBuf {
    let s = std::fs::read_to_string(root().join("jobs.toml")).unwrap();
    let s = s
        .replacen("schedule = \"0 0 3 * * Mon\"", "schedule = \"*/2 * * * * *\"", 1)
        .replacen("catch_up = \"latest\"\nmax_lateness = \"7d\"", "catch_up = \"all\"\nmax_lateness = \"4s\"", 1)
        .replacen("schedule = \"0 30 4 * * *\"", "schedule = \"*/3 * * * * *\"", 1)
        .replacen("[jobs.inbound-volume]\nenabled = true", "[jobs.inbound-volume]\nenabled = false", 1)
        .replacen("[jobs.reprocessing-check]\nenabled = true", "[jobs.reprocessing-check]\nenabled = false", 1);
    let p = dir.join("jobs.toml");
    std::fs::write(&p, s).unwrap();
    p
}

#[derive(serde::Deserialize, Debug)]
struct Run {
    job: String,
    slot: String,
    outcome: String,
    started_at: chrono::DateTime<chrono::Utc>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn runs(env: &[(&str, String)], config: &Path) -> Vec<Run> {
    let o = Command::new(BIN)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .arg("--config")
        .arg(config)
        .args(["runs", "--limit", "1000", "--format", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_every_slot_once_without_overlap_and_drains_on_sigterm() {
    let sandbox = Sandbox::start_local(SandboxSettings::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path());
    let env = vec![
        ("DATABASE_URL", format!("sqlite://{}", dir.path().join("d.db").display())),
        ("ASTRA_BASE_URL", sandbox.base_url()),
        ("ASTRA_CLIENT_ID", "sandbox-client".to_string()),
        ("ASTRA_CLIENT_SECRET", "sandbox-secret".to_string()),
        ("ASTRA_WORKER_TOKEN_KEY", b64(&KEY_A)),
        ("RUST_LOG", "info".to_string()),
    ];
    let (env2, config2) = (env.clone(), config.clone());
    let result = tokio::task::spawn_blocking(move || {
        let mut daemon = Command::new(BIN)
            .envs(env2.iter().map(|(k, v)| (*k, v)))
            .arg("--config")
            .arg(&config2)
            .arg("run")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Read its log as it comes (a full pipe would block the daemon).
        let out = daemon.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(out).lines() {
                log.push_str(&line.unwrap());
                log.push('\n');
            }
            log
        });
        // Wait (bounded) until the daemon has run each job a few times.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut once_runs = 0;
        loop {
            let r = runs(&env2, &config2);
            let rot = r.iter().filter(|x| x.job == "token-rotation").count();
            let sweep = r.iter().filter(|x| x.job == "stale-authorization-sweep").count();
            if once_runs < 3 {
                // A --run-once of the sweep beside the daemon: the ledger keeps each slot to one run.
                let o = Command::new(BIN)
                    .envs(env2.iter().map(|(k, v)| (*k, v)))
                    .arg("--config")
                    .arg(&config2)
                    .args(["--run-once", "stale-authorization-sweep"])
                    .output()
                    .unwrap();
                assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
                once_runs += 1;
            }
            if rot >= 5 && sweep >= 4 {
                break;
            }
            // A daemon that exited, or ran nothing in time, fails the test with its own log.
            let exited = daemon.try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline {
                let _ = daemon.kill();
                let log = reader.join().unwrap();
                panic!("the daemon did not run its jobs (exited: {exited:?}): {r:?}\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let kill = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let status = daemon.wait().unwrap();
        (status, reader.join().unwrap())
    })
    .await
    .unwrap();
    let (status, log) = result;
    assert_eq!(status.code(), Some(0), "SIGTERM drains and exits 0:\n{log}");
    assert!(log.contains("daemon stopped"));

    let all = runs(&env, &config);
    for job in ["token-rotation", "stale-authorization-sweep"] {
        let mut r: Vec<&Run> = all.iter().filter(|x| x.job == job).collect();
        r.sort_by_key(|x| x.started_at);
        let mut slots: Vec<&str> = r.iter().map(|x| x.slot.as_str()).collect();
        let n = slots.len();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), n, "{job}: each slot ran once: {r:?}");
        for w in r.windows(2) {
            let prev_end = w[0].finished_at.expect("finished");
            assert!(w[1].started_at >= prev_end, "{job}: runs overlap: {:?} and {:?}", w[0], w[1]);
        }
        assert!(r.iter().all(|x| x.outcome == "succeeded" || x.outcome == "interrupted"), "{r:?}");
    }
    // Rotation (catch-up `all`) left no slot out between its first and last run.
    let mut rot: Vec<chrono::DateTime<chrono::Utc>> = all
        .iter()
        .filter(|x| x.job == "token-rotation")
        .map(|x| chrono::DateTime::parse_from_rfc3339(&x.slot).unwrap().with_timezone(&chrono::Utc))
        .collect();
    rot.sort();
    assert!(rot.windows(2).all(|w| w[1] - w[0] == chrono::TimeDelta::seconds(2)), "{rot:?}");
}
