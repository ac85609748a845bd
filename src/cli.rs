//! Command line: `coupond serve | consume | migrate | reconcile | preload |
//! events | watch | dlq`. The load generator is a binary of its own (`coupond-bench`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ServeSettings, Settings};
use crate::startup::Application;
use crate::{shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "coupond",
    version,
    about = "Coupon pre-generation and real-time issuance"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server (and, unless --no-consumer, the finalizer).
    Serve(ServeSettings),
    /// Run only the finalizer (Kafka -> PostgreSQL), e.g. to scale it separately.
    Consume(ConsumeArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Compare an event's Redis state with PostgreSQL; exit 1 on any
    /// difference other than in-flight issuances.
    Reconcile(ReconcileArgs),
    /// Preload an event on a running server and show its progress until it
    /// is LIVE (admin token from COUPOND_ADMIN_TOKEN).
    Preload {
        #[command(flatten)]
        server: crate::operator::ServerArgs,
        #[command(flatten)]
        event: crate::operator::PreloadArgs,
    },
    /// A live view of a drop, refreshed each second until the event ends.
    Watch {
        #[command(flatten)]
        server: crate::operator::ServerArgs,
        #[command(flatten)]
        args: crate::watch::WatchArgs,
    },
    /// The dead-letter topic: `list` what was dead-lettered and why,
    /// `replay` it onto coupon-issued after a fix (each message once).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// List a running server's events with their state and counts, or
    /// control one: `coupond events pause|resume|close|extend --event E --reason R`.
    Events {
        #[command(flatten)]
        server: crate::operator::ServerArgs,
        #[command(subcommand)]
        control: Option<crate::operator::EventControl>,
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

#[derive(clap::Args)]
struct ConsumeArgs {
    /// gRPC listener answering `grpc.health.v1` for service
    /// "coupon.v1.Finalizer" (NOT_SERVING while Redis, PostgreSQL or Kafka
    /// is unreachable, or while draining), or "off".
    #[arg(
        long,
        env = "COUPOND_CONSUME_HEALTH_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    health_listen: String,
}

#[derive(clap::Args)]
struct ReconcileArgs {
    /// The event to check.
    #[arg(long)]
    event: String,
    /// Rebuild the event's Redis state from PostgreSQL (after a Redis loss).
    #[arg(long)]
    rebuild_redis: bool,
    /// With --rebuild-redis: also when the event is live (takes it offline
    /// for the moments of the rebuild), and while the finalizer lags
    /// (keeps the event's issuances found in its backlog, pending).
    #[arg(long, requires = "rebuild_redis")]
    force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Reconcile found differences (exit status 1, not an error).
#[derive(Debug, thiserror::Error)]
#[error("redis and postgres differ")]
struct Inconsistent;

/// The report as JSON with its verdict, as the text report ends with it.
fn with_verdict(report: &crate::reconcile::Report) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(report)?;
    let verdict = match report.consistent() {
        true => "CONSISTENT",
        false => "INCONSISTENT",
    };
    v["verdict"] = verdict.into();
    Ok(v)
}

/// The process's Prometheus exporter (`serve` and `consume` only).
fn install_metrics(s: &Settings) -> anyhow::Result<()> {
    match s.metrics.addr()? {
        Some(addr) => crate::metrics::install(addr),
        None => Ok(()),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
    // Inside the runtime: the OTLP exporter batches on it.
    let result = rt.block_on(async {
        telemetry::init();
        let r = run(cli).await;
        tokio::task::spawn_blocking(telemetry::shutdown).await.ok();
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Inconsistent>() => ExitCode::from(1),
        Err(e) => {
            // Once, on stderr (where the logs go too).
            eprintln!("coupond: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(serve) => {
            install_metrics(&cli.settings)?;
            let app = Application::build(cli.settings, serve).await?;
            app.run_until_stopped(shutdown::on_signals()).await
        }
        Command::Consume(args) => {
            install_metrics(&cli.settings)?;
            let health = match args.health_listen.trim() {
                "off" => None,
                a => Some(a.parse().map_err(|e| {
                    anyhow::anyhow!("--health-listen / COUPOND_CONSUME_HEALTH_LISTEN {a:?}: {e}")
                })?),
            };
            crate::startup::consume(&cli.settings, health, shutdown::on_signals()).await
        }
        Command::Reconcile(args) => {
            let event = crate::domain::EventId::parse(args.event)
                .map_err(|e| anyhow::anyhow!("--event: {e}"))?;
            let s = &cli.settings;
            let pg = crate::store::PgStore::connect(&s.database.url, 2)?;
            let redis = crate::store::RedisStore::connect(&s.redis.url, 2)?;
            let rebuilt = match args.rebuild_redis {
                true => Some(
                    crate::reconcile::rebuild(
                        &pg,
                        &redis,
                        &s.kafka,
                        &event,
                        args.force,
                        &shutdown::on_signals(),
                    )
                    .await?,
                ),
                false => None,
            };
            let report = crate::reconcile::reconcile(&pg, &redis, &event).await?;
            match (args.json, &rebuilt) {
                (true, None) => {
                    println!("{}", serde_json::to_string_pretty(&with_verdict(&report)?)?)
                }
                (true, Some(r)) => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "rebuild": r, "reconcile": with_verdict(&report)? })
                    )?
                ),
                (false, r) => {
                    if let Some(r) = r {
                        println!("{r}");
                    }
                    println!("{report}");
                }
            }
            if report.consistent() {
                Ok(())
            } else {
                Err(Inconsistent.into())
            }
        }
        Command::Preload { server, event } => crate::operator::preload(&server, &event).await,
        Command::Watch { server, args } => crate::watch::watch(&server, &args).await,
        Command::Dlq {
            action: DlqAction::List { json },
        } => crate::dead_letters::list(&cli.settings.kafka, json).await,
        Command::Dlq {
            action: DlqAction::Replay,
        } => crate::dead_letters::replay(&cli.settings.kafka)
            .await
            .map(|_| ()),
        Command::Events {
            server,
            control: None,
        } => crate::operator::events(&server).await,
        Command::Events {
            server,
            control: Some(c),
        } => crate::operator::control(&server, &c).await,
        Command::Migrate => {
            let pg = crate::store::PgStore::connect(&cli.settings.database.url, 1)?;
            pg.migrate().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
