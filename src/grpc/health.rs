//! `grpc.health.v1`, told the truth: a service is SERVING only while the
//! stores it needs answer (probed every second) and the process is not
//! draining. The overall status ("") is SERVING when every service is.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::service::readiness::{Reachable, Readiness};

pub const ADMIN: &str = "coupon.v1.CouponAdmin";
pub const ISSUER: &str = "coupon.v1.CouponIssuer";
/// What `coupond consume` reports.
pub const FINALIZER: &str = "coupon.v1.Finalizer";

const EVERY: Duration = Duration::from_secs(1);

/// The services one process reports, and which stores each needs.
#[derive(Debug, Clone, Copy)]
pub enum Reports {
    /// `serve`: CouponAdmin and CouponIssuer.
    Server,
    /// `consume`: the finalizer.
    Finalizer,
}

impl Reports {
    fn statuses(self, r: &Reachable) -> Vec<(&'static str, &'static str, bool)> {
        match self {
            Reports::Server => vec![(ADMIN, "admin", r.admin()), (ISSUER, "issuer", r.issuer())],
            Reports::Finalizer => vec![(FINALIZER, "finalizer", r.finalizer())],
        }
    }
}

const ALL: Reachable = Reachable {
    redis: true,
    postgres: true,
    kafka: true,
};

/// Reports every service SERVING: what a process that just connected to
/// its stores says before it accepts the first call.
pub async fn serving_at_start(reporter: &HealthReporter, reports: Reports) {
    set(reporter, reports.statuses(&ALL)).await;
}

/// Probes and reports changes until `draining` fires, then reports
/// NOT_SERVING for every service (the server keeps answering health while
/// it drains). Starts from `serving_at_start`.
pub async fn report(
    reporter: HealthReporter,
    readiness: Readiness,
    reports: Reports,
    draining: CancellationToken,
) -> anyhow::Result<()> {
    let mut last = Some(ALL);
    loop {
        let reachable = tokio::select! {
            _ = draining.cancelled() => break,
            r = readiness.probe(matches!(reports, Reports::Finalizer)) => r,
        };
        if last != Some(reachable) {
            tracing::info!(?reachable, "health: stores reachable");
            set(&reporter, reports.statuses(&reachable)).await;
            last = Some(reachable);
        }
        tokio::select! {
            _ = draining.cancelled() => break,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
    let down = Reachable {
        redis: false,
        postgres: false,
        kafka: false,
    };
    set(&reporter, reports.statuses(&down)).await;
    tracing::info!("health: draining, every service NOT_SERVING");
    Ok(())
}

async fn set(reporter: &HealthReporter, statuses: Vec<(&'static str, &'static str, bool)>) {
    let all = statuses.iter().all(|(_, _, ok)| *ok);
    for (name, label, ok) in statuses {
        reporter.set_service_status(name, status(ok)).await;
        crate::metrics::serving(label, ok);
    }
    reporter.set_service_status("", status(all)).await;
}

fn status(ok: bool) -> ServingStatus {
    if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}
