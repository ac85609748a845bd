//! `coupond-bench`: drives a running coupond over its public gRPC API
//! (unary Issue, IssueStream, Preload) or measures the broker alone, and
//! prints a JSON report. A binary of its own, so the service carries none
//! of it.

mod broker;
mod db;
mod load;
mod report;
mod run;

use std::process::ExitCode;

use clap::Parser;
use coupond::cli::args::{DatabaseArgs, KafkaArgs};

#[derive(Parser)]
#[command(name = "coupond-bench", version, about)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    args: run::BenchArgs,
}

fn main() -> ExitCode {
    // The old setting names (COUPOND_KAFKA_LINGER_MS…) as coupond takes them.
    coupond::cli::accept_old_names();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coupond-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.args.json.clone();
    if cli.args.mode == run::Mode::Broker {
        let report = broker::run(&cli.kafka.into(), cli.args.requests).await?;
        eprintln!("{}", report.summary());
        return write(&report, json.as_deref());
    }
    let report = load::run(cli.args, Some(&cli.database.url)).await?;
    eprintln!("{}", report.summary());
    write(&report, json.as_deref())?;
    anyhow::ensure!(
        report.invariants_ok,
        "invariants violated: duplicate codes or users, or oversold"
    );
    Ok(())
}

/// Prints the report as JSON, and writes it to `path` too when given.
fn write(report: &impl serde::Serialize, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let out = serde_json::to_string_pretty(report)?;
    if let Some(path) = path {
        std::fs::write(path, &out)?;
    }
    println!("{out}");
    Ok(())
}
