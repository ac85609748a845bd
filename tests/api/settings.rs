//! Settings where users look for them: every setting after the subcommand
//! that uses it, in its `--help`, in the README's tables and in the example
//! config file; flag > environment > file > default; the old names still
//! accepted.

use std::collections::BTreeSet;

fn coupond(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let defaults = coupond::cli::args::settings_from_env().unwrap();
    let out = crate::common::coupond(&defaults, args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The variables a subcommand's `--help` lists.
fn help_vars(sub: &[&str]) -> BTreeSet<String> {
    let mut args = sub.to_vec();
    args.push("--help");
    let (exit, out) = coupond(&args, &[]);
    assert_eq!(exit, 0, "{out}");
    out.split("env: ")
        .skip(1)
        .map(|s| {
            s.split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

const SUBCOMMANDS: [&[&str]; 9] = [
    &["serve"],
    &["consume"],
    &["migrate"],
    &["reconcile"],
    &["preload"],
    &["watch"],
    &["events"],
    &["dlq", "list"],
    &["config", "check"],
];

#[test]
fn the_readme_settings_tables_match_every_help() {
    let helped: BTreeSet<String> = SUBCOMMANDS.iter().flat_map(|s| help_vars(s)).collect();
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `COUPOND_"))
        .flat_map(|l| {
            l.split('|')
                .nth(1)
                .unwrap()
                .split('/')
                .map(|v| v.trim().trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let undocumented: Vec<&String> = helped.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&helped).collect();
    assert!(
        undocumented.is_empty(),
        "in --help, not in the README: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "in the README, in no --help: {unknown:?}"
    );
    // Every setting serve uses is after `serve`, with its own flag.
    assert!(help_vars(&["serve"]).contains("COUPOND_LOG_FORMAT"));
}

#[test]
fn the_example_file_names_every_setting_and_passes_the_check() {
    let example = std::fs::read_to_string(repo("ops/coupond.toml")).unwrap();
    let keys: BTreeSet<String> = example
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim()))
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(|k| format!("COUPOND_{}", k.to_ascii_uppercase()))
        .collect();
    let mut settings: BTreeSet<String> = SUBCOMMANDS.iter().flat_map(|s| help_vars(s)).collect();
    // Secrets never stand in the file; the file's own path, neither.
    for v in [
        "COUPOND_ADMIN_TOKEN",
        "COUPOND_ISSUER_TOKEN",
        "COUPOND_CONFIG",
    ] {
        settings.remove(v);
    }
    // The admin commands' own (the server they call), not the server's.
    for v in [
        "COUPOND_SERVER",
        "COUPOND_TLS_CA",
        "COUPOND_CLIENT_CERT",
        "COUPOND_CLIENT_KEY",
        "COUPOND_WATCH_METRICS",
    ] {
        settings.remove(v);
    }
    let missing: Vec<&String> = settings.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "settings the example lacks: {missing:?}"
    );
    let (exit, out) = coupond(&["config", "check", &repo("ops/coupond.toml")], &[]);
    assert_eq!(exit, 0, "{out}");
    assert!(out.contains("is valid"), "{out}");
}

#[test]
fn the_environment_beats_the_file_which_beats_the_default_and_old_names_work() {
    let dir = std::env::temp_dir().join(format!("coupond-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "redis_pool_size = 9\nretention = \"2h\"\nsweep_interval = \"250ms\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (exit, out) = coupond(
        &["config", "check", f],
        &[
            ("COUPOND_REDIS_POOL_SIZE", "7"),
            ("COUPOND_SWEEP_AGE_MS", "1500"),
        ],
    );
    assert_eq!(exit, 0, "{out}");
    assert!(out.contains("pool_size: 7,"), "the environment wins: {out}");
    assert!(
        out.contains("retention: 7200s,"),
        "the file beats the default: {out}"
    );
    assert!(out.contains("interval: 250ms,"), "{out}");
    assert!(
        out.contains("age: 1.5s,"),
        "the old COUPOND_SWEEP_AGE_MS: {out}"
    );
    assert!(
        out.contains("response_timeout: 500ms,"),
        "the default: {out}"
    );

    std::fs::write(&file, "redis_pool_sise = 9\n").unwrap();
    let (exit, out) = coupond(&["config", "check", f], &[]);
    assert_ne!(exit, 0);
    assert!(out.contains("redis_pool_sise: no such setting"), "{out}");
    std::fs::write(&file, "admin_token = \"0123456789abcdef0\"\n").unwrap();
    let (exit, out) = coupond(&["config", "check", f], &[]);
    assert_ne!(exit, 0);
    assert!(out.contains("admin_token_file"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_flag_after_the_subcommand_beats_the_environment_and_the_file() {
    let dir = std::env::temp_dir().join(format!("coupond-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "redis_pool_size = 9\n").unwrap();
    let (exit, out) = coupond(
        &[
            "config",
            "check",
            file.to_str().unwrap(),
            "--redis-pool-size",
            "3",
        ],
        &[("COUPOND_REDIS_POOL_SIZE", "7")],
    );
    assert_eq!(exit, 0, "{out}");
    assert!(out.contains("pool_size: 3,"), "the flag wins: {out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// What the review of the settings found: a key spelled in capitals is
/// refused (so no secret slips past the checks), a password in a URL's
/// query is refused in the file and never printed, `config check FILE`
/// reads FILE whatever COUPOND_CONFIG names, the old `--retention-secs`
/// counts seconds, and the settings of a command with actions of its own
/// are taken after the action too.
#[test]
fn secrets_stay_out_of_files_and_old_spellings_keep_their_meaning() {
    let dir = std::env::temp_dir().join(format!("coupond-review-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    let f = file.to_str().unwrap();
    let check = |text: &str, envs: &[(&str, &str)]| {
        std::fs::write(&file, text).unwrap();
        coupond(&["config", "check", f], envs)
    };
    let (exit, out) = check("ADMIN_TOKEN = \"0123456789abcdef0\"\n", &[]);
    assert_ne!(exit, 0);
    assert!(out.contains("keys are lowercase: admin_token"), "{out}");
    let (exit, out) = check(
        "database_url = \"postgres://a@db/c?password=hunter2\"\n",
        &[],
    );
    assert_ne!(exit, 0);
    assert!(out.contains("database_url: holds a password"), "{out}");
    let (exit, out) = check(
        "",
        &[
            (
                "COUPOND_DATABASE_URL",
                "postgres://a@db/c?sslmode=disable&password=hunter2",
            ),
            (
                "COUPOND_OTLP_ENDPOINT",
                "https://u:otlpsecret@collector:4317",
            ),
        ],
    );
    assert_eq!(exit, 0, "{out}");
    assert!(
        !out.contains("hunter2") && !out.contains("otlpsecret"),
        "{out}"
    );
    assert!(out.contains("sslmode=disable&password=***"), "{out}");

    let other = dir.join("other.toml");
    std::fs::write(&other, "retention = \"9s\"\n").unwrap();
    let other = other.to_str().unwrap();
    let (exit, out) = check("retention = \"2h\"\n", &[("COUPOND_CONFIG", other)]);
    assert_eq!(exit, 0, "{out}");
    assert!(
        out.contains("retention: 7200s,"),
        "FILE, not COUPOND_CONFIG: {out}"
    );

    let (exit, out) = coupond(&["config", "check", f, "--retention-secs", "60"], &[]);
    assert_eq!(exit, 0, "{out}");
    assert!(out.contains("retention: 60s,"), "seconds, as before: {out}");

    // Parsed, then refused only for want of a server.
    let control = [
        "events",
        "pause",
        "--event",
        "e1",
        "--reason",
        "r",
        "--server",
        "http://127.0.0.1:1",
    ];
    let (exit, out) = coupond(&control, &[]);
    assert_ne!(exit, 0);
    assert!(out.contains("connecting to http://127.0.0.1:1"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}
