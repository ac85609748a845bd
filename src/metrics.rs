//! The Prometheus metrics coupond exports, through the `metrics` facade:
//! every name, unit and label in one place. The exporter (an HTTP listener
//! of its own) is installed by the command line for `serve` and `consume`;
//! without it, recording costs next to nothing. Label values are bounded
//! sets (RPC, result, partition, a deployment's live events): never a user
//! id or a code.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const ISSUE_OUTCOMES: &str = "coupond_issue_outcomes_total";
pub const ISSUE_DURATION: &str = "coupond_issue_duration_seconds";
pub const SCRIPT_USERS: &str = "coupond_issue_script_users";
pub const SCRIPT_DURATION: &str = "coupond_issue_script_duration_seconds";
pub const PUBLISH_DURATION: &str = "coupond_publish_duration_seconds";
pub const PUBLISH_FAILURES: &str = "coupond_publish_failures_total";
pub const NOT_DURABLE: &str = "coupond_issued_not_durable_total";
pub const PENDING: &str = "coupond_pending_issuances";
pub const FINALIZER_ROWS: &str = "coupond_finalizer_rows_total";
pub const FINALIZER_BATCHES: &str = "coupond_finalizer_batches_total";
pub const CONSUMER_LAG: &str = "coupond_consumer_lag_messages";
pub const FINALIZE_DELAY: &str = "coupond_finalize_delay_seconds";
pub const REPUBLISHED: &str = "coupond_sweeper_republished_total";
pub const DEAD_LETTERS: &str = "coupond_dead_letters_total";
pub const DEAD_LETTERS_FAILED: &str = "coupond_dead_letters_failed_total";
pub const CONFLICTS: &str = "coupond_conflicts_total";
pub const PRELOAD_WRITTEN: &str = "coupond_preload_written_coupons";
pub const SERVING: &str = "coupond_serving";
pub const REPLICA_UNCONFIRMED: &str = "coupond_redis_replica_unconfirmed_total";
pub const SHARD_TRANSFERS: &str = "coupond_shard_transfers_total";
pub const SHARD_CODES_MOVED: &str = "coupond_shard_codes_moved_total";

/// Buckets for request-path latencies (seconds): 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for the finalizer's delay (seconds): 10 ms to 5 min.
const DELAY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets for users per script call.
const USER_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Starts the exporter's HTTP listener (`GET /metrics`) on `addr`, with
/// histograms as Prometheus histograms, and describes every metric.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(FINALIZE_DELAY.into()), DELAY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SCRIPT_USERS.into()), USER_BUCKETS)?
        .install()
        .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
    describe();
    zeros();
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(())
}

/// The counters alerts watch exist from the start at 0, so that
/// `increase()` sees their first event (a series that appears at 1 shows no
/// increase).
fn zeros() {
    for reason in DEAD_LETTER_REASONS {
        counter!(DEAD_LETTERS, "reason" => reason).increment(0);
    }
    for outcome in ROW_OUTCOMES {
        counter!(FINALIZER_ROWS, "outcome" => outcome).increment(0);
    }
    for name in [
        DEAD_LETTERS_FAILED,
        PUBLISH_FAILURES,
        NOT_DURABLE,
        CONFLICTS,
        REPUBLISHED,
        FINALIZER_BATCHES,
        REPLICA_UNCONFIRMED,
        SHARD_TRANSFERS,
        SHARD_CODES_MOVED,
    ] {
        counter!(name).increment(0);
    }
}

fn describe() {
    describe_counter!(ISSUE_OUTCOMES, "Issue answers by RPC (issue, issue_stream) and result (an IssueResult, or the gRPC status of a failed call).");
    describe_histogram!(
        ISSUE_DURATION,
        metrics::Unit::Seconds,
        "Time to answer one Issue call or stream item."
    );
    describe_histogram!(
        SCRIPT_USERS,
        "Users carried by one issue script call (batching)."
    );
    describe_histogram!(
        SCRIPT_DURATION,
        metrics::Unit::Seconds,
        "Time of one issue script call, retries included."
    );
    describe_histogram!(
        PUBLISH_DURATION,
        metrics::Unit::Seconds,
        "Time for Kafka to acknowledge a CouponIssued message."
    );
    describe_counter!(
        PUBLISH_FAILURES,
        "CouponIssued messages Kafka did not acknowledge (left pending for the sweeper)."
    );
    describe_counter!(
        NOT_DURABLE,
        "ISSUED answers in ack mode that Kafka had not acknowledged (durable=false)."
    );
    describe_counter!(
        REPLICA_UNCONFIRMED,
        "Issue batch calls whose writes the replicas did not confirm within COUPOND_REDIS_REPLICA_TIMEOUT (their users were not told ISSUED; the batch is asked again)."
    );
    describe_counter!(
        SHARD_TRANSFERS,
        "Transfers of codes between the shards of sharded events this process made, to refill a dry shard or to spread a preload."
    );
    describe_counter!(SHARD_CODES_MOVED, "Codes those transfers moved.");
    describe_gauge!(
        PENDING,
        "Issuances in Redis not yet recorded in PostgreSQL, per live event."
    );
    describe_counter!(
        FINALIZER_ROWS,
        "Messages the finalizer applied, by outcome (finalized, superseded, conflicted, undecodable, refused; restored counts the finalized ones whose record Redis had lost and got back)."
    );
    describe_counter!(FINALIZER_BATCHES, "Batches the finalizer applied.");
    describe_gauge!(
        CONSUMER_LAG,
        "Messages of coupon-issued the finalizer group has not committed, per partition."
    );
    describe_histogram!(
        FINALIZE_DELAY,
        metrics::Unit::Seconds,
        "From ISSUED in Redis to recorded in PostgreSQL."
    );
    describe_counter!(
        REPUBLISHED,
        "Pending issuances the sweeper published again."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Messages sent to the dead-letter topic, by reason (undecodable, conflict, refused)."
    );
    describe_counter!(
        DEAD_LETTERS_FAILED,
        "Messages the dead-letter topic refused for good (too large): skipped; the log names each."
    );
    describe_counter!(
        CONFLICTS,
        "Issuances PostgreSQL refused because it records their code for another user."
    );
    describe_gauge!(
        PRELOAD_WRITTEN,
        "Coupons a preload job has written, per event being preloaded."
    );
    describe_gauge!(
        SERVING,
        "1 while the service (admin, issuer, finalizer) reports SERVING, else 0."
    );
}

/// Which issue RPC an answer came from.
#[derive(Debug, Clone, Copy)]
pub enum Rpc {
    Issue,
    IssueStream,
}

impl Rpc {
    fn as_str(self) -> &'static str {
        match self {
            Rpc::Issue => "issue",
            Rpc::IssueStream => "issue_stream",
        }
    }
}

/// One Issue answer: `result` is a bounded name (see ISSUE_OUTCOMES).
pub fn issue_answered(rpc: Rpc, result: &'static str, took: Duration) {
    counter!(ISSUE_OUTCOMES, "rpc" => rpc.as_str(), "result" => result).increment(1);
    histogram!(ISSUE_DURATION, "rpc" => rpc.as_str()).record(took.as_secs_f64());
}

pub fn script_called(users: usize, took: Duration) {
    histogram!(SCRIPT_USERS).record(users as f64);
    histogram!(SCRIPT_DURATION).record(took.as_secs_f64());
}

pub fn published(took: Duration, acknowledged: bool) {
    if acknowledged {
        histogram!(PUBLISH_DURATION).record(took.as_secs_f64());
    } else {
        counter!(PUBLISH_FAILURES).increment(1);
    }
}

pub fn replica_unconfirmed() {
    counter!(REPLICA_UNCONFIRMED).increment(1);
}

pub fn shard_transfer(codes: usize) {
    counter!(SHARD_TRANSFERS).increment(1);
    counter!(SHARD_CODES_MOVED).increment(codes as u64);
}

pub fn answered_not_durable() {
    counter!(NOT_DURABLE).increment(1);
}

pub fn pending(event: &str, n: u64) {
    gauge!(PENDING, "event" => event.to_owned()).set(n as f64);
}

/// The finalizer's row outcomes (see FINALIZER_ROWS).
pub const ROW_OUTCOMES: [&str; 6] = [
    "finalized",
    "restored",
    "superseded",
    "conflicted",
    "undecodable",
    "refused",
];

/// One batch: rows by outcome (one of `ROW_OUTCOMES`).
pub fn finalizer_batch(rows: &[(&'static str, usize)]) {
    counter!(FINALIZER_BATCHES).increment(1);
    for (outcome, n) in rows {
        counter!(FINALIZER_ROWS, "outcome" => *outcome).increment(*n as u64);
        if *outcome == "conflicted" {
            counter!(CONFLICTS).increment(*n as u64);
        }
    }
}

pub fn finalize_delay(d: Duration) {
    histogram!(FINALIZE_DELAY).record(d.as_secs_f64());
}

pub fn consumer_lag(partition: i32, lag: u64) {
    gauge!(CONSUMER_LAG, "partition" => partition.to_string()).set(lag as f64);
}

pub fn republished(n: usize) {
    counter!(REPUBLISHED).increment(n as u64);
}

/// Why messages are dead-lettered (see DEAD_LETTERS).
pub const DEAD_LETTER_REASONS: [&str; 3] = ["undecodable", "conflict", "refused"];

/// `reason`: one of `DEAD_LETTER_REASONS`.
pub fn dead_lettered(reason: &'static str) {
    counter!(DEAD_LETTERS, "reason" => reason).increment(1);
}

/// A dead letter the broker refused for good (too large): the message was
/// skipped, only the log says where it is.
pub fn dead_letter_failed() {
    counter!(DEAD_LETTERS_FAILED).increment(1);
}

pub fn preload_written(event: &str, written: u64) {
    gauge!(PRELOAD_WRITTEN, "event" => event.to_owned()).set(written as f64);
}

/// `service`: "admin", "issuer" or "finalizer".
pub fn serving(service: &'static str, yes: bool) {
    gauge!(SERVING, "service" => service).set(if yes { 1.0 } else { 0.0 });
}
