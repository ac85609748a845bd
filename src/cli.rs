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
    Reconcile(crate::ops::reconcile::ReconcileArgs),
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
    },
    /// List a running server's events with their state and counts, or
    /// control one: `coupond events pause|resume|close|extend --event E --reason R`.
    Events {
        #[command(flatten)]
        server: crate::ops::ServerArgs,
        #[command(subcommand)]
        control: Option<crate::ops::events::EventControl>,
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
        Err(e) if e.is::<crate::ops::reconcile::Inconsistent>() => ExitCode::from(1),
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
            shutdown::until_signalled(|stop| app.run_until_stopped(stop)).await
        }
        Command::Consume(args) => {
            install_metrics(&cli.settings)?;
            let health = match args.health_listen.trim() {
                "off" => None,
                a => Some(a.parse().map_err(|e| {
                    anyhow::anyhow!("--health-listen / COUPOND_CONSUME_HEALTH_LISTEN {a:?}: {e}")
                })?),
            };
            let settings = &cli.settings;
            shutdown::until_signalled(|stop| crate::startup::consume(settings, health, stop)).await
        }
        Command::Reconcile(args) => crate::ops::reconcile::run(&cli.settings, &args).await,
        Command::Preload { server, event } => crate::ops::preload::preload(&server, &event).await,
        Command::Watch { server, args } => crate::ops::watch::watch(&server, &args).await,
        Command::Dlq {
            action: DlqAction::List { json },
        } => crate::ops::dead_letters::list(&cli.settings.kafka, json).await,
        Command::Dlq {
            action: DlqAction::Replay,
        } => crate::ops::dead_letters::replay(&cli.settings.kafka)
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
