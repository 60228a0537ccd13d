//! `BENCHMARKS.md`, written by the harness: the machine, then one section per part run, each a table of what
//! was measured, how, and the figures. A part not run this time keeps the section an earlier run wrote (the
//! sections are delimited by `<!-- bench:NAME -->` … `<!-- /bench:NAME -->`), so `BENCH_ONLY=rotation`
//! refreshes the rotation figures alone.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

#[derive(Default)]
pub(super) struct Report {
    sections: BTreeMap<&'static str, Section>,
    machine: Vec<String>,
}

#[derive(Default)]
struct Section {
    title: &'static str,
    /// When its first figure (or note) was taken.
    at: String,
    rows: Vec<[String; 3]>,
    notes: Vec<String>,
    /// Rows of the earlier file this run did not measure again are kept (a part that measures one store only).
    keep_earlier_rows: bool,
}

/// The order sections appear in, and their titles.
const SECTIONS: [(&str, &str); 9] = [
    ("guard", "Guard: the library call"),
    ("sync", "Sync cost: transfer-sync"),
    ("rotation", "Rotation: rate, bunching, memory, store time"),
    ("rotation-large", "Rotation at ten times the grants"),
    ("rotation-large-slow", "Rotation at ten times the grants, 100 requests/s"),
    ("by-hand", "Rotation beside the loop a fintech writes by hand"),
    ("aggregation", "Aggregation: the daily recompute against a bare GROUP BY"),
    ("service", "The service: HTTP guard and webhook intake"),
    ("no-op", "A no-op `--run-once`"),
];

impl Report {
    pub(super) fn new(machine: Vec<String>) -> Report {
        Report { machine, ..Default::default() }
    }

    pub(super) fn row(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        method: impl Into<String>,
        result: String,
    ) {
        let s = self.section(section);
        s.rows.push([what.into(), method.into(), result]);
        println!("{section}: {} — {}", s.rows.last().unwrap()[0], s.rows.last().unwrap()[2]);
    }

    /// Keeps the rows of `section` that the earlier file has and this run does not measure again (`guard-pg`
    /// measures PostgreSQL only: SQLite's rows stay).
    pub(super) fn keep_earlier_rows(&mut self, section: &'static str) {
        if let Some(s) = self.sections.get_mut(section) {
            s.keep_earlier_rows = true;
        }
    }

    /// A line under a section's table: a target met or missed, and why (or how to read the rows).
    pub(super) fn note(&mut self, section: &'static str, text: String) {
        println!("{section}: note: {text}");
        self.section(section).notes.push(text);
    }

    /// This run's `section`, begun now if it has no figure or note yet.
    fn section(&mut self, section: &'static str) -> &mut Section {
        let title = SECTIONS.iter().find(|s| s.0 == section).map(|s| s.1).expect("a known section");
        self.sections.entry(section).or_insert_with(|| Section {
            title,
            at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            ..Default::default()
        })
    }

    pub(super) fn path() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"))
    }

    /// Writes the file: this run's sections, and the others as an earlier run left them.
    pub(super) fn write(&self) {
        let old = std::fs::read_to_string(Self::path()).unwrap_or_default();
        let mut out = String::from(
            "# Benchmarks\n\nWritten by the harness (`examples/bench`), never by hand: `cargo build --release --bins \
             --examples && ./target/release/examples/bench --pg postgres://postgres@127.0.0.1:5432/postgres`; \
             `BENCH_ONLY=guard|guard-pg|sync|rotation|aggregation|serve|serve-pg|no-op` runs one part and keeps the \
             other sections as they were (`guard-pg`, `serve-pg`: PostgreSQL's guard rows alone); \
             `BENCH_ONLY=rotation-large|rotation-large-slow`, not in the full run, \
             rotate 200,000 grants. The sandbox runs as its own process on loopback with the latency given. Tests \
             never assert on time.\n\n",
        );
        for (name, _) in SECTIONS {
            let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
            match self.sections.get(name) {
                Some(s) => {
                    let _ = writeln!(out, "{open}\n## {}\n", s.title);
                    let _ = writeln!(out, "Run {} on {}.\n", s.at, self.machine.join(", "));
                    out.push_str("| what | method | result |\n|---|---|---|\n");
                    if s.keep_earlier_rows
                        && let (Some(a), Some(b)) = (old.find(&open), old.find(&close))
                    {
                        let measured = |line: &str| s.rows.iter().any(|r| line.starts_with(&format!("| {} |", r[0])));
                        for line in old[a..b].lines().filter(|l| l.starts_with("| ") && !l.starts_with("| what |")) {
                            if !measured(line) {
                                let _ = writeln!(out, "{line}");
                            }
                        }
                    }
                    for [what, method, result] in &s.rows {
                        let _ = writeln!(out, "| {what} | {method} | {result} |");
                    }
                    if !s.notes.is_empty() {
                        out.push('\n');
                        for n in &s.notes {
                            let _ = writeln!(out, "- {n}");
                        }
                    }
                    let _ = writeln!(out, "{close}\n");
                }
                None => {
                    if let (Some(a), Some(b)) = (old.find(&open), old.find(&close)) {
                        out.push_str(&old[a..b + close.len()]);
                        out.push_str("\n\n");
                    }
                }
            }
        }
        std::fs::write(Self::path(), out.trim_end().to_string() + "\n").unwrap();
        println!("wrote {}", Self::path().display());
    }
}

/// The machine the figures come from: cores, memory, CPU, and the store versions.
pub(super) async fn machine(pg: Option<&str>) -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1));
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let mut m = vec![
        format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        format!("{} GiB", (mem_kib as f64 / 1_048_576.0).round()),
        model.unwrap_or("an unknown CPU").trim().to_string(),
    ];
    let sqlite = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    let v: String = sqlx::query_scalar("SELECT sqlite_version()").fetch_one(&sqlite).await.unwrap();
    m.push(format!("SQLite {v} (WAL, synchronous = NORMAL)"));
    if let Some(url) = pg {
        let p = sqlx::PgPool::connect(url).await.unwrap();
        let v: String = sqlx::query_scalar("SHOW server_version").fetch_one(&p).await.unwrap();
        let sc: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&p).await.unwrap();
        // The URL's `sslmode` decides it (sqlx's default, `prefer`, takes TLS when the server offers it).
        let tls: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&p).await.unwrap();
        let tls = if tls { "TLS" } else { "no TLS" };
        m.push(format!("PostgreSQL {v} on loopback (synchronous_commit = {sc}, {tls})"));
    }
    m.push(if super::sandbox_favoured() {
        format!("the sandbox started at nice {} (it stands for Astra's own servers)", super::SANDBOX_NICE)
    } else {
        "the sandbox at the harness's priority (`nice` refused)".into()
    });
    m.push("release build".into());
    m
}
