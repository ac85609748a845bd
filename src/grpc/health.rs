//! `grpc.health.v1`, told the truth: a service is SERVING only while the
//! stores it needs answer (probed every second) and the process is not
//! draining. The overall status ("") is SERVING when every service is.

use std::time::Duration;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
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
    /// `serve`: CouponAdmin and CouponIssuer, and the finalizer when it
    /// runs in the process (not with --no-consumer).
    Server { finalizer: bool },
    /// `consume`: the finalizer.
    Finalizer,
}

impl Reports {
    fn statuses(self, r: &Reachable) -> Vec<(&'static str, &'static str, bool)> {
        let finalizer = (FINALIZER, "finalizer", r.finalizer());
        match self {
            Reports::Server { finalizer: false } => {
                vec![(ADMIN, "admin", r.admin()), (ISSUER, "issuer", r.issuer())]
            }
            Reports::Server { finalizer: true } => vec![
                (ADMIN, "admin", r.admin()),
                (ISSUER, "issuer", r.issuer()),
                finalizer,
            ],
            Reports::Finalizer => vec![finalizer],
        }
    }

    /// Whether the finalizer is reported (its probe needs Kafka).
    fn finalizer(self) -> bool {
        matches!(
            self,
            Reports::Finalizer | Reports::Server { finalizer: true }
        )
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
            r = readiness.probe(reports.finalizer()) => r,
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

/// `grpc.health.v1` whose Watch streams end when the process drains, with
/// a last NOT_SERVING: a load balancer holding one open must not keep a
/// graceful shutdown waiting, and must hear that this process is going.
pub struct DrainingHealth {
    inner: HealthService,
    draining: CancellationToken,
}

impl DrainingHealth {
    pub fn new(reporter: HealthReporter, draining: CancellationToken) -> HealthServer<Self> {
        HealthServer::new(Self {
            inner: HealthService::from_health_reporter(reporter),
            draining,
        })
    }
}

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        self.inner.check(req).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        let updates = self.inner.watch(req).await?.into_inner();
        let last = HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
        };
        let stream = updates
            .take_until(self.draining.clone().cancelled_owned())
            .chain(futures::stream::once(async move { Ok(last) }));
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}
