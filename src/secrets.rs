//! Secrets, never from `jobs.toml`: from the variable `NAME`, from the file named by `NAME_FILE`, or from
//! `$CREDENTIALS_DIRECTORY/NAME` (systemd `LoadCredential=`, or a mounted Kubernetes Secret). Values are
//! held as [`SecretString`], whose `Debug` prints nothing.

use std::path::PathBuf;

use secrecy::SecretString;

use crate::failure::Failure;

/// The secret `name`, or `None` when no source has it. An unreadable file named for it is an error.
pub(crate) fn read(name: &str) -> anyhow::Result<Option<SecretString>> {
    if let Ok(v) = std::env::var(name) {
        return non_empty(name, v, "the environment");
    }
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(f) = std::env::var(format!("{name}_FILE")) {
        files.push(f.into());
    } else if let Ok(dir) = std::env::var("CREDENTIALS_DIRECTORY") {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            files.push(p);
        }
    }
    match files.first() {
        None => Ok(None),
        Some(p) => {
            let v = std::fs::read_to_string(p)
                .map_err(|e| Failure::Config(format!("secret {name}: cannot read {}: {e}", p.display())))?;
            non_empty(name, v.trim_end_matches(['\n', '\r']).to_string(), &p.display().to_string())
        }
    }
}

/// The secret `name`; its absence is a configuration failure that says where it was looked for.
pub(crate) fn require(name: &str) -> anyhow::Result<SecretString> {
    read(name)?.ok_or_else(|| {
        Failure::config(format!(
            "missing secret {name}: set {name}, or {name}_FILE to a file holding it, or put it in \
             $CREDENTIALS_DIRECTORY/{name}"
        ))
    })
}

fn non_empty(name: &str, v: String, source: &str) -> anyhow::Result<Option<SecretString>> {
    if v.trim().is_empty() {
        return Err(Failure::config(format!("secret {name} from {source} is empty")));
    }
    Ok(Some(SecretString::from(v)))
}

/// Input JSON parsed as `T`, with an error that names the field (its path) and echoes no value. The input is one
/// JSON object and nothing after it (serde would read a struct from an array, by position, and stop after the
/// first value, so a second object on a line would be lost unsaid), and no string in it holds a NUL, which
/// PostgreSQL refuses to store.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(input: &[u8]) -> Result<T, String> {
    if input.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("malformed JSON: expected one object, {…}".into());
    }
    let mut de = serde_json::Deserializer::from_slice(input);
    let parsed = serde_path_to_error::deserialize(&mut de).map_err(described)?;
    de.end().map_err(|e| format!("malformed JSON: more than one object ({})", redact_quoted(&e.to_string())))?;
    if holds_nul(input) {
        let at = serde_json::from_slice(input).ok().and_then(|v| nul_at(&v, "")).unwrap_or_default();
        return Err(match at {
            p if plain_path(&p) => format!("{p} contains a control character (NUL, which no store keeps)"),
            _ => "a field contains a control character (NUL, which no store keeps)".into(),
        });
    }
    Ok(parsed)
}

/// Whether JSON text holds the escape of a NUL character (a backslash that is not itself escaped, then `u0000`).
fn holds_nul(input: &[u8]) -> bool {
    input
        .windows(6)
        .enumerate()
        .any(|(i, w)| w == b"\\u0000" && input[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0)
}

/// The path (as serde_path_to_error writes it) of the first key or string holding a NUL.
fn nul_at(v: &serde_json::Value, path: &str) -> Option<String> {
    let here = || if path.is_empty() { ".".to_string() } else { path.to_string() };
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some(here()),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, x)| nul_at(x, &format!("{path}[{i}]")))
        }
        serde_json::Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            if k.contains('\0') { Some(here()) } else { nul_at(x, &p) }
        }),
        _ => None,
    }
}

/// [`parse_json`] of JSON already read (an item of a page Astra sent).
pub(crate) fn from_json_value<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(described)
}

/// Whether a path of the input's keys reads as field names, and so may be shown (an unknown key may be anything,
/// a pasted token included).
fn plain_path(path: &str) -> bool {
    path != "."
        && path.len() <= 80
        && path.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c))
}

fn described(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let inner = redact_quoted(&e.into_inner().to_string());
    match path.as_str() {
        "." => format!("malformed JSON: {inner}"),
        _ if plain_path(&path) => format!("field `{path}`: {inner}"),
        _ => format!("a field: {inner}"),
    }
}

/// A value as shown in a message: control characters and backticks dropped, cut to 40 characters, so a pasted
/// token or a 10 MB id is never echoed whole, and the backticks around it are the only ones.
pub fn shown(v: &str) -> String {
    let cut: String = v.chars().filter(|c| !c.is_control() && *c != '`').take(40).collect();
    if cut.len() < v.len() { format!("`{cut}…`") } else { format!("`{cut}`") }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    // A SQLite URL names a file and holds no credentials; a URL that does not parse may still hold a password
    // where a parser would not find it: its scheme alone.
    if url.starts_with("sqlite:") {
        return url.to_string();
    }
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return match url.split_once("://") {
            Some((scheme, _))
                if scheme.len() <= 20 && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') =>
            {
                format!("{scheme}://… (not a URL)")
            }
            _ => "… (not a URL)".into(),
        };
    };
    // `?password=…`, `?sslpassword=…` and the like carry a secret too.
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        ["pass", "pwd", "secret", "token", "key", "sig", "auth"].iter().any(|s| k.contains(s))
    };
    let in_query = u.query_pairs().any(|(k, _)| secret(&k));
    if u.password().is_none() && !in_query {
        return url.to_string();
    }
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if in_query {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// An id of the fintech's or Astra's (a user, a destination): 1 to 256 characters, none a control character
/// (a NUL byte among them, which PostgreSQL refuses to store). The error names `field`, never the value.
pub fn check_id(field: &str, v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        return Err(format!("{field} is empty"));
    }
    if v.chars().count() > 256 {
        return Err(format!("{field} is longer than 256 characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{field} contains a control character"));
    }
    Ok(())
}

/// Replaces every quoted string in a parser message (it might be a token) with `"…"` (an escaped `\"` does not
/// end it), and every backticked name that is not a plain lower-case field name (serde's "unknown field
/// `…`" echoes whatever key the input had) with `` `…` ``.
pub(crate) fn redact_quoted(msg: &str) -> String {
    // serde's "unknown field `KEY`, expected …" and "unknown variant `VALUE`, expected …" echo the input raw,
    // backticks in it included: everything up to the last "`, expected" is the input's.
    for echo in ["unknown field `", "unknown variant `"] {
        if let Some(start) = msg.find(echo) {
            let from = start + echo.len();
            let to = msg.rfind("`, expected").or_else(|| msg.rfind("` at line")).filter(|&t| t >= from);
            let rest = to.map_or(String::new(), |t| format!("`{}", redact_marks(&msg[t + 1..])));
            return format!("{}{echo}…{rest}", redact_marks(&msg[..start]));
        }
    }
    redact_marks(msg)
}

/// Quoted strings and backticked names that are not plain field names (lower case, `_` and `-`, as the
/// settings' and jobs' names are), cut out of `msg`.
fn redact_marks(msg: &str) -> String {
    let mut out = String::new();
    let mut chars = msg.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => {
                out.push_str("\"…\"");
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '`' => {
                let name: String = chars.by_ref().take_while(|c| *c != '`').collect();
                let plain = !name.is_empty()
                    && name.len() <= 40
                    && name.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '-');
                out.push('`');
                out.push_str(if plain { &name } else { "…" });
                out.push('`');
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Line {
        user_id: String,
        #[serde(default)]
        addenda: Vec<String>,
    }

    #[test]
    fn an_input_is_one_object_and_nothing_after_it() {
        assert!(parse_json::<Line>(br#" {"user_id":"a"}  "#).is_ok());
        let e = parse_json::<Line>(br#"{"user_id":"a"}{"user_id":"b"}"#).unwrap_err();
        assert!(e.contains("more than one object"), "{e}");
        assert!(parse_json::<Line>(br#"{"user_id":"a"} garbage"#).unwrap_err().contains("more than one object"));
        let e = parse_json::<Line>(br#"["a"]"#).unwrap_err();
        assert!(e.contains("expected one object"), "an array is not read by position: {e}");
    }

    #[test]
    fn a_nul_anywhere_is_refused_naming_its_field_and_an_escaped_backslash_is_not_one() {
        let e = parse_json::<Line>(br#"{"user_id":"a","addenda":["ok","x\u0000"]}"#).unwrap_err();
        assert_eq!(e, "addenda[1] contains a control character (NUL, which no store keeps)");
        let e = parse_json::<Line>(br#"{"user_id":"\u0000"}"#).unwrap_err();
        assert!(e.starts_with("user_id contains a control character"), "{e}");
        let ok = parse_json::<Line>(br#"{"user_id":"a\\u0000"}"#).unwrap();
        assert_eq!(ok.user_id, "a\\u0000", "a backslash, then the text u0000");
    }

    #[test]
    fn a_url_loses_its_password_wherever_it_is_written() {
        let r = redact_url("postgres://app:hunter2@db/aw?sslmode=require&password=hunter3");
        assert!(!r.contains("hunter"), "{r}");
        assert!(r.contains("sslmode=require") && r.contains("app:***@"), "{r}");
        assert_eq!(redact_url("sqlite://astra-worker.db"), "sqlite://astra-worker.db");
        assert_eq!(
            redact_url("postgres://app:hunter#2@db/aw"),
            "postgres://… (not a URL)",
            "unparsable: its scheme alone"
        );
        assert_eq!(redact_url("hunter2"), "… (not a URL)");
        let q = redact_url("https://h/x?pwd=hunter4&sig=hunter5&auth=hunter6&page=2");
        assert!(!q.contains("hunter") && q.contains("page=2"), "{q}");
    }

    #[test]
    fn parser_messages_lose_their_quoted_values() {
        let m = r#"invalid type: string "tok-SECRET", expected i64 at line 1 column 20"#;
        assert_eq!(redact_quoted(m), r#"invalid type: string "…", expected i64 at line 1 column 20"#);
        let escaped = r#"invalid value: string "a\"tok-SECRET\"b", expected x"#;
        assert_eq!(redact_quoted(escaped), r#"invalid value: string "…", expected x"#);
        let key = "unknown field `tok-SECRET-123`, expected one of `user_id`, `access_token`";
        assert_eq!(redact_quoted(key), "unknown field `…`, expected one of `user_id`, `access_token`");
        let ticked = "unknown field `x`tok-secret`, expected one of `user_id`";
        assert_eq!(redact_quoted(ticked), "unknown field `…`, expected one of `user_id`");
        assert_eq!(redact_quoted("unknown field `x`tok"), "unknown field `…");
        assert_eq!(shown("a`tok`b"), "`atokb…`", "a shown value's backticks are its own");
        // Found by the import_lines fuzz target: a kind with backticks in it was echoed between them.
        let variant = "unknown variant `a`tok-SECRET`b`, expected `account` or `card` at line 1 column 9";
        assert_eq!(redact_quoted(variant), "unknown variant `…`, expected `account` or `card` at line 1 column 9");
    }

    proptest::proptest! {
        #[test]
        fn redacting_any_message_ends_and_never_echoes_a_quoted_secret(pre in "[^\"`\\\\]{0,30}", secret in "[A-Za-z0-9`\\\\-]{1,30}") {
            let m = format!("{pre}unknown field `{secret}`, expected one of `user_id`");
            let r = redact_quoted(&m);
            proptest::prop_assert!(r.ends_with("`, expected one of `user_id`"), "{}", r);
            let q = format!("{pre} string \"{secret}\" at line 1");
            let rq = redact_quoted(&q);
            let telling = secret.len() >= 6 && !pre.contains(&secret) && !"unknown field, expected one of user_id string at line 1".contains(&secret);
            if telling {
                proptest::prop_assert!(!r.contains(&secret), "{}", r);
                proptest::prop_assert!(!rq.contains(&secret), "{}", rq);
            }
        }
    }
}
