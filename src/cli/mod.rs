//! Command line: `coupond serve | consume | migrate | reconcile | archive | preload |
//! events | watch | dlq | config`. It only parses and dispatches: each
//! subcommand takes the settings it uses (after its name), turns them into
//! values (`config`) and calls the code that does the work. The load
//! generator is a binary of its own (`coupond-bench`).

pub mod args;
mod file;

pub use file::accept_old_names;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::cli::args::{
    DatabaseArgs, KafkaArgs, RedisArgs, ServeArgs, SettingsArgs, TelemetryArgs,
};
use crate::config::{ServeSettings, Settings, TelemetrySettings};
use crate::startup::Application;
use crate::{shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "coupond",
    version,
    about = "Coupon pre-generation and real-time issuance"
)]
struct Cli {
    /// A TOML file of settings (keys as the variables without COUPOND_,
    /// lower case: redis_url = "..."): flags and the environment win over
    /// it, it wins over the defaults. See ops/coupond.toml.
    #[arg(long, env = "COUPOND_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server (and, unless --no-consumer, the finalizer).
    Serve {
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run only the finalizer (Kafka -> PostgreSQL), e.g. to scale it separately.
    Consume {
        #[command(flatten)]
        settings: SettingsArgs,
        /// gRPC listener answering `grpc.health.v1` for service
        /// "coupon.v1.Finalizer" (NOT_SERVING while Redis, PostgreSQL or
        /// Kafka is unreachable, or while draining), or "off".
        #[arg(
            long,
            env = "COUPOND_CONSUME_HEALTH_LISTEN",
            default_value = "127.0.0.1:50052"
        )]
        health_listen: String,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Compare an event's Redis state with PostgreSQL; exit 1 on any
    /// difference other than in-flight issuances.
    Reconcile {
        #[command(flatten)]
        args: crate::ops::reconcile::ReconcileArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Archive an ended, settled event: its issued coupons move out of the
    /// table every drop writes (holders are still answered from the
    /// archive), the codes nobody was given are dropped.
    Archive {
        #[command(flatten)]
        args: crate::ops::archive::ArchiveArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Preload an event on a running server and show its progress until it
    /// is LIVE (admin token from COUPOND_ADMIN_TOKEN).
    Preload {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(flatten)]
        event: crate::ops::preload::PreloadArgs,
    },
    /// A live view of a drop, refreshed each second until the event ends.
    Watch {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(flatten)]
        args: crate::ops::watch::WatchArgs,
    },
    /// The dead-letter topic: `list` what was dead-lettered and why,
    /// `replay` it onto coupon-issued after a fix (each message once).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// List a running server's events with their state and counts, or
    /// control one: `coupond events pause|resume|close|extend --event E --reason R`.
    Events {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(subcommand)]
        control: Option<crate::ops::events::EventControl>,
    },
    /// Configuration files: `check FILE` validates one and prints the
    /// settings `serve` would run with (secrets redacted).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Print every dead letter: partition/offset, the issuance, the reason.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish the dead letters not replayed yet back onto coupon-issued.
    Replay,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate FILE and print the settings `serve` would run with it, the
    /// environment as it is and `serve`'s FLAGS if any, secrets redacted.
    Check {
        file: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        flags: Vec<String>,
    },
}

/// Every environment variable a command reads: what a config file may set.
fn known_variables() -> BTreeSet<String> {
    fn walk(c: &clap::Command, out: &mut BTreeSet<String>) {
        for a in c.get_arguments() {
            if let Some(env) = a.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for s in c.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&Cli::command(), &mut out);
    out.remove("COUPOND_CONFIG");
    out
}

pub fn main() -> ExitCode {
    let argv = file::renamed_flags(std::env::args_os().collect());
    if let Err(e) = file::prepare(&argv, &known_variables()) {
        eprintln!("coupond: {e:#}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse_from(argv);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coupond: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry_settings = TelemetrySettings::from(cli.telemetry.clone());
    // Inside the runtime: the OTLP exporter batches on it.
    let result = rt.block_on(async {
        telemetry::init(&telemetry_settings);
        let r = run(cli.command).await;
        tokio::task::spawn_blocking(telemetry::shutdown).await.ok();
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<crate::ops::reconcile::Inconsistent>() => ExitCode::from(1),
        Err(e) => {
            // Once, on stderr (where the logs go too).
            eprintln!("coupond: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The process's Prometheus exporter (`serve` and `consume` only).
fn install_metrics(s: &Settings) -> anyhow::Result<()> {
    match s.metrics.addr()? {
        Some(addr) => crate::metrics::install(addr),
        None => Ok(()),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { settings, serve } => {
            let settings = Settings::from(settings);
            install_metrics(&settings)?;
            let app = Application::build(settings, ServeSettings::from(serve)).await?;
            shutdown::until_signalled(|stop| app.run_until_stopped(stop)).await
        }
        Command::Consume {
            settings,
            health_listen,
        } => consume(Settings::from(settings), &health_listen).await,
        Command::Migrate { database } => {
            let pg = crate::store::PgStore::connect(&database.url, database.pool_size)?;
            pg.migrate().await
        }
        Command::Reconcile {
            args,
            redis,
            database,
            kafka,
        } => {
            let stores = (redis.into(), database.into(), kafka.into());
            crate::ops::reconcile::run(&stores.0, &stores.1, &stores.2, &args).await
        }
        Command::Archive {
            args,
            redis,
            database,
            kafka,
        } => crate::ops::archive::run(&redis.into(), &database.into(), &kafka.into(), &args).await,
        Command::Preload { server, event } => crate::ops::preload::preload(&server, &event).await,
        Command::Watch { server, args } => crate::ops::watch::watch(&server, &args).await,
        Command::Dlq {
            action: DlqAction::List { json },
            kafka,
        } => crate::ops::dead_letters::list(&kafka.into(), json).await,
        Command::Dlq {
            action: DlqAction::Replay,
            kafka,
        } => crate::ops::dead_letters::replay(&kafka.into())
            .await
            .map(|_| ()),
        Command::Events {
            server,
            control: None,
        } => crate::ops::events::events(&server).await,
        Command::Events {
            server,
            control: Some(c),
        } => crate::ops::events::control(&server, &c).await,
        Command::Config {
            action: ConfigAction::Check { file, flags },
        } => check_config(&file, &flags),
    }
}

async fn consume(settings: Settings, health_listen: &str) -> anyhow::Result<()> {
    install_metrics(&settings)?;
    let health = match health_listen.trim() {
        "off" => None,
        a => Some(a.parse().map_err(|e| {
            anyhow::anyhow!("--health-listen / COUPOND_CONSUME_HEALTH_LISTEN {a:?}: {e}")
        })?),
    };
    let settings = &settings;
    shutdown::until_signalled(|stop| crate::startup::consume(settings, health, stop)).await
}

/// `coupond config check FILE [FLAGS]`: the file's keys checked, then the
/// settings `serve` would run with (flags, the environment, the file),
/// redacted.
fn check_config(path: &std::path::Path, flags: &[String]) -> anyhow::Result<()> {
    let known = known_variables();
    for (var, value) in file::read(path, &known)? {
        if std::env::var_os(&var).is_none() {
            std::env::set_var(&var, value);
        }
    }
    let argv = ["coupond", "serve"].into_iter().map(String::from);
    let cli = Cli::try_parse_from(argv.chain(flags.iter().cloned()))
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim()))?;
    let Command::Serve { settings, serve } = cli.command else {
        unreachable!("parsed `serve`")
    };
    println!(
        "{path:?} is valid; `coupond serve` would run with:",
        path = path.display()
    );
    println!("{:#?}", Settings::from(settings));
    println!("{:#?}", ServeSettings::from(serve));
    println!("{:#?}", TelemetrySettings::from(cli.telemetry));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn settings_are_taken_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "coupond",
            "serve",
            "--redis-url",
            "redis://r:1",
            "--redis-response-timeout",
            "250ms",
            "--retention",
            "2h",
        ])
        .unwrap();
        let Command::Serve { settings, .. } = cli.command else {
            panic!("serve")
        };
        let s = Settings::from(settings);
        assert_eq!(s.redis.url, "redis://r:1");
        assert_eq!(
            s.redis.response_timeout,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(s.sweep.retention, std::time::Duration::from_secs(7200));
        let old = Cli::try_parse_from(["coupond", "serve", "--redis-response-timeout-ms", "700"]);
        let Command::Serve { settings, .. } = old.unwrap().command else {
            panic!("serve")
        };
        assert_eq!(
            settings.redis.response_timeout.as_millis(),
            700,
            "the old flag"
        );
    }

    #[test]
    fn blank_kafka_properties_set_nothing_and_bad_ones_are_named() {
        let kafka = |list: &str| {
            let cli = Cli::try_parse_from(["coupond", "serve", "--kafka-property", list])?;
            let Command::Serve { settings, .. } = cli.command else {
                panic!("serve")
            };
            Ok::<_, clap::Error>(Settings::from(settings).kafka.properties)
        };
        assert!(kafka("").unwrap().is_empty(), "an empty list");
        let set = kafka("a.b=1; ;c.d=2;").unwrap();
        let keys: Vec<&str> = set.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["a.b", "c.d"], "blank entries skipped");
        let e = kafka("a.b=1;oops").unwrap_err().to_string();
        assert!(e.contains("\"oops\" is not KEY=VALUE"), "{e}");
    }
}
