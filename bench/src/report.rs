//! The benchmark report: JSON for machines, a summary for people.

use std::collections::HashMap;

use std::collections::HashSet;

use crate::db::FinalizeDelays;
use crate::run::{BenchArgs, Event, Finalization, Measured, Mode};

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub mode: Mode,
    pub concurrency: usize,
    /// Requests per second of an open loop (`--rate`); 0: a closed loop.
    pub rate: u32,
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
    pub fn new(
        args: &BenchArgs,
        event: &Event,
        total_coupons: u32,
        run: Measured,
        fin: Finalization,
    ) -> Self {
        let Measured { tally, elapsed } = run;
        let h = &tally.latency;
        let requests = tally.results.values().sum::<u64>() + tally.errors.values().sum::<u64>();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let issued = tally.issued.len() as u64;
        Self {
            mode: args.mode,
            concurrency: args.concurrency,
            rate: args.rate,
            event_id: event.id.clone(),
            total_coupons,
            preload_ms: event.preload_ms,
            requests,
            elapsed_s: secs,
            requests_per_s: requests as f64 / secs,
            latency_us: Latency {
                p50: h.value_at_quantile(0.50),
                p90: h.value_at_quantile(0.90),
                p99: h.value_at_quantile(0.99),
                max: h.max(),
            },
            invariants_ok: invariants_hold(&tally.issued, total_coupons),
            results: tally.results,
            grpc_errors: tally.errors,
            issued,
            finalized: fin.finalized,
            finalize_catch_up_ms: fin.catch_up_ms,
            finalize_delay: fin.delays,
        }
    }

    pub fn summary(&self) -> String {
        let mut results: Vec<_> = self.results.iter().collect();
        results.sort();
        format!(
            "mode={:?} concurrency={}{} requests={} in {:.2}s => {:.0} req/s | latency p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms | results {:?} | grpc errors {:?} | issued {} of {} | invariants {} | finalized {} (caught up after {:?} ms){}",
            self.mode,
            self.concurrency,
            match self.rate {
                0 => String::new(),
                r => format!(" rate={r}/s"),
            },
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

/// No code and no user twice among the ISSUED answers, and no more issued
/// than the event holds.
fn invariants_hold(issued: &[(String, String)], total: u32) -> bool {
    let codes: HashSet<&String> = issued.iter().map(|(c, _)| c).collect();
    let users: HashSet<&String> = issued.iter().map(|(_, u)| u).collect();
    let n = issued.len();
    codes.len() == n && users.len() == n && n as u64 <= u64::from(total)
}

#[cfg(test)]
mod tests {
    use super::invariants_hold;

    #[test]
    fn a_code_or_user_twice_or_an_oversell_breaks_the_invariants() {
        let p = |c: &str, u: &str| (c.to_owned(), u.to_owned());
        assert!(invariants_hold(&[p("A", "u1"), p("B", "u2")], 2));
        assert!(!invariants_hold(&[p("A", "u1"), p("A", "u2")], 2));
        assert!(!invariants_hold(&[p("A", "u1"), p("B", "u1")], 2));
        assert!(!invariants_hold(&[p("A", "u1"), p("B", "u2")], 1));
    }
}
