//! One tower layer around every RPC: a log line at a level chosen by the
//! call's status (client errors quiet, server errors loud), and the
//! metrics of unary Issue calls the handler answered: their outcome, under
//! the label the handler told (`Told`) or, for a call that failed, the one
//! its status implies (see `grpc::outcome`), and their latency. Stream
//! items are counted one by one where they are answered.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Code;
use tower::{Layer, Service};

use crate::grpc::outcome::{is_issue_answer, label_of_code};
use crate::metrics::{self, Rpc};

/// The unary Issue RPC's path.
const ISSUE: &str = "/coupon.v1.CouponIssuer/Issue";

/// What a handler tells the layer of its answer: an Issue result's label.
#[derive(Debug, Clone, Copy)]
pub struct Told(pub &'static str);

#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let started = Instant::now();
        let answering = self.inner.call(req);
        Box::pin(async move {
            let res = answering.await;
            if let Ok(r) = &res {
                observed(&path, r, started.elapsed());
            }
            res
        })
    }
}

/// The call's status: from the response's headers (a unary answer or an
/// early failure); a stream's status comes later, in its trailers (OK here).
fn status<RB>(r: &http::Response<RB>) -> Code {
    r.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from)
}

fn observed<RB>(path: &str, r: &http::Response<RB>, took: Duration) {
    let code = status(r);
    if path == ISSUE && is_issue_answer(code) {
        let label = r
            .extensions()
            .get::<Told>()
            .map_or_else(|| label_of_code(code), |t| t.0);
        metrics::issue_answered(Rpc::Issue, label, took);
    }
    let ms = took.as_millis() as u64;
    match code {
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::Cancelled => tracing::debug!(path, ?code, ms, "rpc"),
        Code::DeadlineExceeded | Code::Unavailable | Code::ResourceExhausted | Code::Aborted => {
            tracing::warn!(path, ?code, ms, "rpc failed")
        }
        Code::Unknown | Code::Internal | Code::DataLoss | Code::Unimplemented => {
            tracing::error!(path, ?code, ms, "rpc failed")
        }
    }
}
