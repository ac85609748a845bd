//! Command line: `coupond serve | consume | migrate`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ServeSettings, Settings};
use crate::startup::{Application, Backends};
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
    Consume,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Load-test a running server over gRPC and report figures as JSON.
    Bench(crate::bench::BenchArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("coupond: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(serve) => {
            let app = Application::build(cli.settings, serve).await?;
            app.run_until_stopped(shutdown::on_signals()).await
        }
        Command::Consume => {
            let backends = Backends::connect(&cli.settings).await?;
            backends
                .finalizer(&cli.settings)?
                .run(shutdown::on_signals())
                .await
        }
        Command::Bench(args) => {
            let json = args.json.clone();
            let report = crate::bench::run(args).await?;
            eprintln!("{}", report.summary());
            let out = serde_json::to_string_pretty(&report)?;
            if let Some(path) = json {
                std::fs::write(&path, &out)?;
            }
            println!("{out}");
            if !report.invariants_ok {
                anyhow::bail!("invariants violated: duplicate codes or users, or oversold");
            }
            Ok(())
        }
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
