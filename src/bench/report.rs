//! The benchmark report: JSON for machines, a summary for people.

use std::collections::HashMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{BenchArgs, Mode};
use crate::store::postgres::FinalizeDelays;

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub mode: Mode,
    pub concurrency: usize,
    pub event_id: String,
    pub total_coupons: u32,
    pub preload_ms: Option<u64>,
    pub requests: u64,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub latency_us: Latency,
    pub results: HashMap<String, u64>,
    pub grpc_errors: HashMap<String, u64>,
    pub issued: u64,
    pub invariants_ok: bool,
    pub finalized: u32,
    pub finalize_catch_up_ms: Option<u64>,
    /// Per issuance, ISSUED in Redis to committed in PostgreSQL.
    pub finalize_delay: Option<FinalizeDelays>,
}

#[derive(Debug, serde::Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        args: &BenchArgs,
        event_id: String,
        total_coupons: u32,
        preload_ms: Option<u64>,
        elapsed: Duration,
        h: &Histogram<u64>,
        results: HashMap<String, u64>,
        grpc_errors: HashMap<String, u64>,
        issued: u64,
        invariants_ok: bool,
        finalized: u32,
        finalize_catch_up_ms: Option<u64>,
        finalize_delay: Option<FinalizeDelays>,
    ) -> Self {
        let requests = results.values().sum::<u64>() + grpc_errors.values().sum::<u64>();
        let secs = elapsed.as_secs_f64().max(1e-9);
        Self {
            mode: args.mode,
            concurrency: args.concurrency,
            event_id,
            total_coupons,
            preload_ms,
            requests,
            elapsed_s: secs,
            requests_per_s: requests as f64 / secs,
            latency_us: Latency {
                p50: h.value_at_quantile(0.50),
                p90: h.value_at_quantile(0.90),
                p99: h.value_at_quantile(0.99),
                max: h.max(),
            },
            results,
            grpc_errors,
            issued,
            invariants_ok,
            finalized,
            finalize_catch_up_ms,
            finalize_delay,
        }
    }

    pub fn summary(&self) -> String {
        let mut results: Vec<_> = self.results.iter().collect();
        results.sort();
        format!(
            "mode={:?} concurrency={} requests={} in {:.2}s => {:.0} req/s | latency p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms | results {:?} | grpc errors {:?} | issued {} of {} | invariants {} | finalized {} (caught up after {:?} ms){}",
            self.mode,
            self.concurrency,
            self.requests,
            self.elapsed_s,
            self.requests_per_s,
            self.latency_us.p50 as f64 / 1000.0,
            self.latency_us.p90 as f64 / 1000.0,
            self.latency_us.p99 as f64 / 1000.0,
            self.latency_us.max as f64 / 1000.0,
            results,
            self.grpc_errors,
            self.issued,
            self.total_coupons,
            if self.invariants_ok { "OK" } else { "VIOLATED" },
            self.finalized,
            self.finalize_catch_up_ms,
            self.finalize_delay
                .map(|d| format!(
                    " | ISSUED->PostgreSQL p50={:.0}ms p90={:.0}ms p99={:.0}ms max={:.0}ms, {} rows over {:.0}ms",
                    d.p50_ms, d.p90_ms, d.p99_ms, d.max_ms, d.count, d.span_ms
                ))
                .unwrap_or_default(),
        )
    }
}
