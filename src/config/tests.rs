use super::*;

const SHIPPED: &str = include_str!("../../jobs.toml");

fn err(text: &str) -> String {
    Settings::parse(text, None).expect_err("should be refused")
}

/// The shipped file with `from` replaced by `to` (which must occur).
fn shipped_with(from: &str, to: &str) -> String {
    assert!(SHIPPED.contains(from), "test setup: `{from}` not in jobs.toml");
    SHIPPED.replacen(from, to, 1)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle present") + 1
}

#[test]
fn the_shipped_file_is_valid_and_has_every_job() {
    let s = Settings::parse(SHIPPED, None).unwrap();
    let names: Vec<_> = s.jobs.iter().map(|j| j.name).collect();
    assert_eq!(names, JobName::ALL.to_vec());
    assert!(s.jobs.iter().all(|j| j.enabled));
    assert_eq!(s.runner.grace_period, Duration::from_secs(20));
    assert_eq!(s.astra.burst, 4, "20/s gets about 20 ms of quota, at least four");
}

#[test]
fn an_unknown_key_is_refused_naming_it_and_its_line() {
    let text =
        shipped_with("catch_up = \"latest\"\nmax_lateness = \"7d\"", "catch_up = \"latest\"\nmax_latenes = \"7d\"");
    let e = err(&text);
    assert!(e.contains("max_latenes"), "{e}");
    assert!(e.contains(&format!("line {}", line_of(&text, "max_latenes"))), "{e}");
}

#[test]
fn an_unknown_job_table_is_refused() {
    let e = err(&format!("{SHIPPED}\n[jobs.token-rotaton]\nschedule = \"0 0 3 * * *\"\n"));
    assert!(e.contains("token-rotaton"), "{e}");
}

#[test]
fn a_bad_cron_expression_is_refused_naming_the_key_and_line() {
    let text = shipped_with("schedule = \"0 35 0 * * *\"", "schedule = \"0 35 0 * *\"");
    let e = err(&text);
    assert!(e.contains("jobs.reprocessing-check.schedule"), "{e}");
    assert!(e.contains(&format!("line {}", line_of(&text, "\"0 35 0 * *\""))), "{e}");
    assert!(e.contains("six are needed"), "{e}");
}

#[test]
fn an_unknown_time_zone_is_refused() {
    let e = err(&shipped_with("time_zone = \"America/New_York\"", "time_zone = \"America/Springfield\""));
    assert!(e.contains("jobs.token-rotation.time_zone"), "{e}");
    assert!(e.contains("unknown time zone `America/Springfield`"), "{e}");
}

#[test]
fn impossible_numbers_are_refused() {
    let e = err(&shipped_with("requests_per_second = 20", "requests_per_second = -5"));
    assert!(e.contains("requests_per_second"), "{e}");
    let e = err(&shipped_with("requests_per_second = 20", "requests_per_second = 0"));
    assert!(e.contains("astra.requests_per_second") && e.contains("at least 1"), "{e}");
    let e = err(&shipped_with("warn_percent = 80", "warn_percent = 180"));
    assert!(e.contains("jobs.inbound-volume.settings.warn_percent"), "{e}");
    let e = err(&shipped_with("concurrency = 512", "concurrency = 0"));
    assert!(e.contains("jobs.token-rotation.settings.concurrency"), "{e}");
}

#[test]
fn the_postgres_connections_a_long_lived_process_keeps_are_a_setting_within_bounds() {
    let shipped = Settings::parse(SHIPPED, None).unwrap();
    assert_eq!(shipped.store.postgres_connections, crate::store::PG_CONNECTIONS);
    let six = Settings::parse(&shipped_with("postgres_connections = 16", "postgres_connections = 6"), None).unwrap();
    assert_eq!(six.store.postgres_connections, 6);
    let without = Settings::parse(&shipped_with("[store]\npostgres_connections = 16", ""), None).unwrap();
    assert_eq!(without.store.postgres_connections, crate::store::PG_CONNECTIONS, "the default without [store]");
    for edge in [2, 200] {
        let s = Settings::parse(
            &shipped_with("postgres_connections = 16", &format!("postgres_connections = {edge}")),
            None,
        );
        assert_eq!(s.unwrap().store.postgres_connections, edge, "{edge} is allowed");
    }
    for bad in ["1", "201", "0"] {
        let e = err(&shipped_with("postgres_connections = 16", &format!("postgres_connections = {bad}")));
        assert!(e.contains("store.postgres_connections: must be from 2 to 200"), "{e}");
    }
    let e = err(&shipped_with("postgres_connections = 16", "postgres_connections = -1"));
    assert!(e.contains("postgres_connections"), "{e}");
}

#[test]
fn a_bad_duration_is_refused_with_an_example() {
    let e = err(&shipped_with("grace_period = \"20s\"", "grace_period = \"twenty\""));
    assert!(e.contains("invalid duration `twenty`") && e.contains("line"), "{e}");
}

#[test]
fn plain_http_is_refused_except_toward_loopback() {
    let e = err(&shipped_with("https://api.astra.finance", "http://api.astra.finance"));
    assert!(e.contains("astra.base_url") && e.contains("loopback"), "{e}");
    let s = Settings::parse(SHIPPED, Some("http://127.0.0.1:8080")).unwrap();
    assert_eq!(s.astra.base_url.as_str(), "http://127.0.0.1:8080/");
    let e = Settings::parse(SHIPPED, Some("http://10.0.0.5")).unwrap_err();
    assert!(e.contains("ASTRA_BASE_URL"), "{e}");
}

#[test]
fn a_missing_section_is_named() {
    let text = SHIPPED.replace("redirect_uri = \"https://example.com/astra/oauth/callback\"\n", "");
    let e = err(&text);
    assert!(e.contains("redirect_uri"), "{e}");
}

#[test]
fn a_schedule_that_never_fires_is_refused() {
    let e = err(&shipped_with("schedule = \"0 30 4 * * *\"", "schedule = \"0 0 0 31 2 *\""));
    assert!(e.contains("never fires"), "{e}");
}

#[test]
fn the_default_burst_is_about_twenty_milliseconds_of_quota() {
    assert_eq!(super::default_burst(1), 1);
    assert_eq!(super::default_burst(3), 3);
    assert_eq!(super::default_burst(50), 4);
    assert_eq!(super::default_burst(200), 4);
    assert_eq!(super::default_burst(400), 8);
    assert_eq!(super::default_burst(1000), 20);
}

#[test]
fn a_refused_url_is_never_echoed_with_its_password() {
    let e = err(&shipped_with(
        "base_url = \"https://api.astra.finance\"",
        "base_url = \"http://user:hunter2@api.astra.finance/?token=hunter3\"",
    ));
    assert!(e.contains("astra.base_url") && e.contains("loopback"), "{e}");
    assert!(!e.contains("hunter"), "a password in a refused URL: {e}");
    let e = err(&shipped_with("base_url = \"https://api.astra.finance\"", "base_url = \"ftp://u:hunter2@x\""));
    assert!(e.contains("unsupported scheme `ftp`") && !e.contains("hunter"), "{e}");
    let e = err(&shipped_with("base_url = \"https://api.astra.finance\"", "base_url = \"hunter2 is not a url\""));
    assert!(e.contains("not a URL") && !e.contains("hunter"), "{e}");
}
