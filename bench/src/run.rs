//! What a run is given and what it measured: the arguments and the
//! tallies, shared by the load (`load`) and its report (`report`).

use std::collections::HashMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use coupond::proto::{self, IssueResult};

use crate::db::FinalizeDelays;

/// Which API the load goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// C concurrent clients calling unary Issue.
    Unary,
    /// S concurrent IssueStream streams.
    Stream,
    /// Only preload (measures preload time).
    Preload,
    /// No server: the broker's raw produce and consume rates with the
    /// service's producer settings (`--requests` messages).
    Broker,
}

/// `coupond-bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Load shape.
    #[arg(long, value_enum, default_value_t = Mode::Unary)]
    pub mode: Mode,
    /// Concurrent unary clients (unary) or streams (stream).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Total requests to send (each a distinct user).
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    /// Stop after this many seconds even if requests remain.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Unary only: an open loop at this many requests per second in all.
    /// Request n is sent at n / rate seconds by the next free client (late
    /// when every client is waiting for an answer; --concurrency must be
    /// well above rate × latency), and its latency counts from its send.
    /// 0: each client sends as soon as its last answer came (a closed loop).
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Coupons to preload (ignored with --event).
    #[arg(long, default_value_t = 1_000_000)]
    pub coupons: u32,
    /// Shards of the preloaded event (ignored with --event).
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// Use this existing event instead of preloading one.
    #[arg(long)]
    pub event: Option<String>,
    /// HTTP/2 connections the clients are spread over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Skip waiting for PostgreSQL to catch up.
    #[arg(long)]
    pub no_finalize_wait: bool,
    /// Admin bearer token (for Preload and GetEvent).
    #[arg(long, env = "COUPOND_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Issuer bearer token, when the server requires one.
    #[arg(long, env = "COUPOND_ISSUER_TOKEN", hide_env_values = true)]
    pub issuer_token: Option<String>,
    /// Write the JSON report here (it is always printed too).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Shared tallies of one run.
pub struct Tally {
    pub latency: Histogram<u64>,
    pub results: HashMap<String, u64>,
    pub errors: HashMap<String, u64>,
    /// (code, user) of every ISSUED answer, to check invariants after.
    pub issued: Vec<(String, String)>,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            results: HashMap::new(),
            errors: HashMap::new(),
            issued: Vec::new(),
        }
    }

    pub(crate) fn record(
        &mut self,
        user: String,
        elapsed: Duration,
        r: Result<proto::IssueResponse, tonic::Status>,
    ) {
        let _ = self.latency.record(elapsed.as_micros().max(1) as u64);
        match r {
            Ok(resp) => {
                let name = IssueResult::try_from(resp.result)
                    .map(|r| {
                        r.as_str_name()
                            .trim_start_matches("ISSUE_RESULT_")
                            .to_owned()
                    })
                    .unwrap_or_else(|_| format!("UNKNOWN_{}", resp.result));
                if resp.result == IssueResult::Issued as i32 {
                    if let Some(c) = resp.coupon {
                        self.issued.push((c.code, user));
                    }
                }
                *self.results.entry(name).or_default() += 1;
            }
            Err(s) => *self.errors.entry(format!("{:?}", s.code())).or_default() += 1,
        }
    }
}

/// The event a run issues from.
pub struct Event {
    pub id: String,
    /// How long preloading it took, when the run preloaded it.
    pub preload_ms: Option<u64>,
}

/// What the clients saw.
pub struct Measured {
    pub tally: Tally,
    pub elapsed: Duration,
}

/// How PostgreSQL caught up after the load.
#[derive(Default)]
pub struct Finalization {
    pub finalized: u32,
    pub catch_up_ms: Option<u64>,
    pub delays: Option<FinalizeDelays>,
}
