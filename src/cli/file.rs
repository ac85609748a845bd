//! A TOML config file (`--config FILE`, or `COUPOND_CONFIG`) and the old
//! setting names, both turned into environment variables before the
//! command line is parsed: the key `redis_url` is `COUPOND_REDIS_URL`, set
//! only where the environment does not set it already. So the precedence
//! is flag > environment > file > default, by the command line's own rules,
//! and a value in the file is checked exactly as the flag's would be.
//! Unknown keys are refused with their name; secrets (tokens, a password in
//! a URL, secret Kafka properties) come only from the environment or a
//! file path (`admin_token_file`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::KafkaProperty;

/// Old names still accepted: (old variable, new variable, unit of the old
/// bare number).
const RENAMED: [(&str, &str, &str); 14] = [
    (
        "COUPOND_REDIS_RESPONSE_TIMEOUT_MS",
        "COUPOND_REDIS_RESPONSE_TIMEOUT",
        "ms",
    ),
    (
        "COUPOND_REDIS_CONNECT_TIMEOUT_MS",
        "COUPOND_REDIS_CONNECT_TIMEOUT",
        "ms",
    ),
    (
        "COUPOND_KAFKA_DELIVERY_TIMEOUT_MS",
        "COUPOND_KAFKA_DELIVERY_TIMEOUT",
        "ms",
    ),
    ("COUPOND_KAFKA_LINGER_MS", "COUPOND_KAFKA_LINGER", "ms"),
    (
        "COUPOND_CONSUMER_BATCH_MS",
        "COUPOND_CONSUMER_BATCH_WAIT",
        "ms",
    ),
    (
        "COUPOND_CONSUMER_FETCH_WAIT_MS",
        "COUPOND_CONSUMER_FETCH_WAIT",
        "ms",
    ),
    ("COUPOND_ISSUE_RETRY_MS", "COUPOND_ISSUE_RETRY", "ms"),
    ("COUPOND_SWEEP_AGE_MS", "COUPOND_SWEEP_AGE", "ms"),
    ("COUPOND_SWEEP_MAX_AGE_MS", "COUPOND_SWEEP_MAX_AGE", "ms"),
    ("COUPOND_SWEEP_INTERVAL_MS", "COUPOND_SWEEP_INTERVAL", "ms"),
    ("COUPOND_RETENTION_SECS", "COUPOND_RETENTION", "s"),
    ("COUPOND_PRELOAD_LEASE_MS", "COUPOND_PRELOAD_LEASE", "ms"),
    (
        "COUPOND_PRELOAD_STEP_BUDGET_MS",
        "COUPOND_PRELOAD_STEP_BUDGET",
        "ms",
    ),
    (
        "COUPOND_REQUEST_TIMEOUT_MS",
        "COUPOND_REQUEST_TIMEOUT",
        "ms",
    ),
];

/// Settings that are secrets: never in a config file.
const SECRETS: [(&str, &str); 2] = [
    ("admin_token", "admin_token_file"),
    ("issuer_token", "issuer_token_file"),
];

/// Before parsing: the old names as the new ones, then the config file the
/// command line or the environment names. `known`: every variable a
/// command reads.
pub fn prepare(args: &[OsString], known: &BTreeSet<String>) -> anyhow::Result<()> {
    accept_old_names();
    if let Some(path) = config_path(args) {
        for (var, value) in read(&path, known)? {
            set_default(&var, &value);
        }
    }
    Ok(())
}

/// The command line with the old flags whose bare number was not in
/// milliseconds written as the new ones (`--retention-secs 60` is
/// `--retention 60s`); the old `-ms` flags are aliases of the new ones, as
/// a bare number there is read as milliseconds.
pub fn renamed_flags(args: Vec<OsString>) -> Vec<OsString> {
    const OLD: &str = "--retention-secs";
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let text = a.to_string_lossy().into_owned();
        let value = match text.strip_prefix(OLD) {
            Some("") => it.next().map(|v| v.to_string_lossy().into_owned()),
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_owned()),
            _ => {
                out.push(a);
                continue;
            }
        };
        out.push("--retention".into());
        if let Some(v) = value {
            let v = v.trim();
            out.push(match v.parse::<u64>() {
                Ok(n) => format!("{n}s").into(),
                Err(_) => v.into(),
            });
        }
    }
    out
}

/// The old variables as the new ones (where the new is not set). Before
/// any thread starts.
pub fn accept_old_names() {
    // Before the flag existed an empty value meant text logs.
    if std::env::var_os("COUPOND_LOG_FORMAT").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("COUPOND_LOG_FORMAT");
    }
    for (var, value) in renamed() {
        set_default(&var, &value);
    }
}

/// The new variables the old ones stand for (where the new is not set).
fn renamed() -> Vec<(String, String)> {
    RENAMED
        .iter()
        .filter_map(|(old, new, unit)| {
            let v = std::env::var(old).ok()?;
            let v = v.trim();
            let v = match v.parse::<u64>() {
                Ok(n) => format!("{n}{unit}"),
                Err(_) => v.to_owned(),
            };
            Some((new.to_string(), v))
        })
        .collect()
}

fn set_default(var: &str, value: &str) {
    if std::env::var_os(var).is_none() {
        // Before any thread starts: the runtime is built after parsing.
        std::env::set_var(var, value);
    }
}

/// `--config FILE` / `--config=FILE` on the command line, or COUPOND_CONFIG;
/// none for `coupond config check FILE`, which reads FILE itself.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let words: Vec<_> = args
        .iter()
        .skip(1)
        .take(2)
        .map(|a| a.to_string_lossy())
        .collect();
    if words == ["config", "check"] {
        return None;
    }
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(|p| PathBuf::from(p.as_ref()));
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("COUPOND_CONFIG").map(PathBuf::from)
}

/// The file's settings as (variable, value), every key checked.
pub fn read(path: &Path, known: &BTreeSet<String>) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let bad = |why: String| anyhow::anyhow!("config file {}: {key}: {why}", path.display());
        // One spelling per key, so the secret checks below see every one.
        let lower = key.to_ascii_lowercase();
        if *key != lower {
            return Err(bad(format!("keys are lowercase: {lower}")));
        }
        if let Some((_, instead)) = SECRETS.iter().find(|(k, _)| k == key) {
            return Err(bad(format!(
                "a secret: give it in the environment, or the file's path as {instead}"
            )));
        }
        let var = format!("COUPOND_{}", key.to_ascii_uppercase());
        if !known.contains(&var) {
            return Err(bad("no such setting".into()));
        }
        let value = scalar(value).map_err(bad)?;
        check_no_secret(key, &value).map_err(bad)?;
        // An empty list is the default (nothing): no variable for it.
        if !value.is_empty() {
            out.push((var, value));
        }
    }
    Ok(out)
}

/// A value as its flag would take it: strings as they are, numbers and
/// booleans written out, a list of strings joined with ';' (Kafka's
/// properties).
fn scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or("a list of strings only")
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(";"))
            .map_err(str::to_owned),
        other => Err(format!("{} values are not taken", other.type_str())),
    }
}

fn check_no_secret(key: &str, value: &str) -> Result<(), String> {
    let is_url = key.ends_with("_url") || key.ends_with("_endpoint");
    if is_url && crate::config::redacted_url(value) != value {
        return Err("holds a password: give the URL in the environment".into());
    }
    if key == "kafka_properties" {
        for p in value
            .split(';')
            .filter_map(|p| KafkaProperty::parse(p).ok())
        {
            if p.is_secret() {
                return Err(format!(
                    "{} is a secret: give it in the environment or kafka_properties_file",
                    p.key
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_retention_flag_counts_seconds() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let want = args(&["coupond", "serve", "--retention", "60s", "--x"]);
        let spaced = args(&["coupond", "serve", "--retention-secs", "60", "--x"]);
        assert_eq!(renamed_flags(spaced), want);
        assert_eq!(
            renamed_flags(args(&["coupond", "serve", "--retention-secs=60", "--x"])),
            want
        );
        let written = args(&["coupond", "serve", "--retention-secs", "2h"]);
        assert_eq!(
            renamed_flags(written),
            args(&["coupond", "serve", "--retention", "2h"])
        );
    }

    fn known() -> BTreeSet<String> {
        [
            "COUPOND_REDIS_URL",
            "COUPOND_RETENTION",
            "COUPOND_KAFKA_PROPERTIES",
        ]
        .map(String::from)
        .into()
    }

    fn file(text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("coupond-{}.toml", uuid_like(text)));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn uuid_like(s: &str) -> String {
        format!(
            "{}-{:x}",
            std::process::id(),
            s.len() * 7919 + s.bytes().map(usize::from).sum::<usize>()
        )
    }

    #[test]
    fn keys_become_variables_and_wrong_ones_are_named() {
        let ok = file("redis_url = \"redis://r:6379\"\nretention = \"2h\"\nkafka_properties = [\"a.b=1\", \"c.d=2\"]\n");
        let vars = read(&ok, &known()).unwrap();
        assert_eq!(
            vars,
            [
                (
                    "COUPOND_KAFKA_PROPERTIES".to_string(),
                    "a.b=1;c.d=2".to_string()
                ),
                ("COUPOND_REDIS_URL".into(), "redis://r:6379".into()),
                ("COUPOND_RETENTION".into(), "2h".into()),
            ]
        );
        let unknown = read(&file("redis_ulr = \"x\"\n"), &known())
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("redis_ulr: no such setting"), "{unknown}");
        let secret = read(&file("admin_token = \"s3cret-s3cret-s3cret\"\n"), &known());
        assert!(secret.unwrap_err().to_string().contains("admin_token_file"));
        let password = read(&file("redis_url = \"redis://u:pw@r:6379\"\n"), &known());
        assert!(password.unwrap_err().to_string().contains("password"));
        let kafka = read(
            &file("kafka_properties = [\"sasl.password=x\"]\n"),
            &known(),
        );
        assert!(kafka
            .unwrap_err()
            .to_string()
            .contains("sasl.password is a secret"));
    }

    #[test]
    fn the_config_path_comes_from_the_flag() {
        let args: Vec<OsString> = ["coupond", "serve", "--config", "/etc/c.toml"]
            .map(OsString::from)
            .into();
        assert_eq!(config_path(&args), Some(PathBuf::from("/etc/c.toml")));
        let args: Vec<OsString> = ["coupond", "serve", "--config=/x.toml"]
            .map(OsString::from)
            .into();
        assert_eq!(config_path(&args), Some(PathBuf::from("/x.toml")));
    }
}
