//! `coupon.v1.CouponIssuer`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::FuturesOrdered;
use futures::{Future, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::domain::{CouponError, EventId, FieldError, IssueCommand, UserId};
use crate::grpc::convert;
use crate::metrics::{self, Rpc};
use crate::proto;
use crate::proto::coupon_issuer_server::CouponIssuer;
use crate::service::IssuerService;

pub struct IssuerApi {
    svc: Arc<IssuerService>,
    stream_in_flight: usize,
}

impl IssuerApi {
    pub fn new(svc: Arc<IssuerService>, stream_in_flight: usize) -> Self {
        Self {
            svc,
            stream_in_flight: stream_in_flight.max(1),
        }
    }
}

type ItemFuture = Pin<Box<dyn Future<Output = proto::IssueResponse> + Send>>;

/// One stream item: never fails, every problem becomes a result value.
fn stream_item(svc: Arc<IssuerService>, req: proto::IssueRequest) -> ItemFuture {
    Box::pin(async move {
        let started = Instant::now();
        let resp = answer_item(svc, req).await;
        let result = proto::IssueResult::try_from(resp.result).unwrap_or_default();
        metrics::issue_answered(Rpc::IssueStream, result_name(result), started.elapsed());
        resp
    })
}

async fn answer_item(svc: Arc<IssuerService>, req: proto::IssueRequest) -> proto::IssueResponse {
    {
        let cmd = match IssueCommand::parse(&req.event_id, &req.user_id, &req.request_id) {
            Ok(c) => c,
            Err(e) => {
                return convert::issue_failure(
                    req.request_id,
                    proto::IssueResult::Invalid,
                    e.to_string(),
                )
            }
        };
        match svc.issue(cmd).await {
            Ok(a) => convert::issue_response(req.request_id, &a.outcome, a.durable),
            Err(CouponError::Invalid(e)) => {
                convert::issue_failure(req.request_id, proto::IssueResult::Invalid, e.to_string())
            }
            Err(e @ CouponError::OutcomeUnknown { .. }) => {
                let detail = Status::from(e).message().to_owned();
                convert::issue_failure(req.request_id, proto::IssueResult::Unknown, detail)
            }
            Err(e) => {
                let detail = Status::from(e).message().to_owned();
                convert::issue_failure(req.request_id, proto::IssueResult::Unavailable, detail)
            }
        }
    }
}

/// A result's metric label: its proto name, lower case, without the prefix.
fn result_name(r: proto::IssueResult) -> &'static str {
    use proto::IssueResult as R;
    match r {
        R::Unspecified => "unspecified",
        R::Issued => "issued",
        R::AlreadyIssued => "already_issued",
        R::SoldOut => "sold_out",
        R::NotStarted => "not_started",
        R::Ended => "ended",
        R::EventNotFound => "event_not_found",
        R::Invalid => "invalid",
        R::Unavailable => "unavailable",
        R::Unknown => "unknown",
        R::Conflicted => "conflicted",
        R::Paused => "paused",
    }
}

/// A failed unary call's metric label: the results a stream item would get.
fn status_name(s: &Status) -> &'static str {
    match s.code() {
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => "unknown",
        _ => "unavailable",
    }
}

impl IssuerApi {
    async fn answer(&self, r: proto::IssueRequest) -> Result<proto::IssueResponse, Status> {
        let cmd = IssueCommand::parse(&r.event_id, &r.user_id, &r.request_id)
            .map_err(|e| Status::from(CouponError::Invalid(e)))?;
        let a = self.svc.issue(cmd).await?;
        Ok(convert::issue_response(r.request_id, &a.outcome, a.durable))
    }
}

#[tonic::async_trait]
impl CouponIssuer for IssuerApi {
    async fn issue(
        &self,
        req: Request<proto::IssueRequest>,
    ) -> Result<Response<proto::IssueResponse>, Status> {
        let started = Instant::now();
        let answer = self.answer(req.into_inner()).await;
        let result = match &answer {
            Ok(r) => result_name(proto::IssueResult::try_from(r.result).unwrap_or_default()),
            Err(s) => status_name(s),
        };
        metrics::issue_answered(Rpc::Issue, result, started.elapsed());
        answer.map(Response::new)
    }

    type IssueStreamStream =
        Pin<Box<dyn Stream<Item = Result<proto::IssueResponse, Status>> + Send + 'static>>;

    /// Reads items while fewer than `stream_in_flight` are unanswered (past
    /// that, HTTP/2 flow control pushes back on the client), and answers in
    /// request order. Items of all streams meet in the issue batcher.
    async fn issue_stream(
        &self,
        req: Request<Streaming<proto::IssueRequest>>,
    ) -> Result<Response<Self::IssueStreamStream>, Status> {
        let mut inbound = req.into_inner();
        let svc = self.svc.clone();
        let limit = self.stream_in_flight;
        let (tx, rx) = mpsc::channel(limit);
        tokio::spawn(async move {
            let mut in_flight: FuturesOrdered<ItemFuture> = FuturesOrdered::new();
            let mut reading = true;
            loop {
                tokio::select! {
                    biased;
                    Some(resp) = in_flight.next(), if !in_flight.is_empty() => {
                        if tx.send(Ok(resp)).await.is_err() {
                            return; // client gone
                        }
                    }
                    item = inbound.next(), if reading && in_flight.len() < limit => match item {
                        Some(Ok(r)) => in_flight.push_back(stream_item(svc.clone(), r)),
                        Some(Err(status)) => {
                            tracing::debug!(%status, "issue stream ended by the client");
                            reading = false;
                        }
                        None => reading = false,
                    },
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_issuance(
        &self,
        req: Request<proto::GetIssuanceRequest>,
    ) -> Result<Response<proto::GetIssuanceResponse>, Status> {
        let r = req.into_inner();
        let invalid =
            |f: &str, e: String| Status::from(CouponError::Invalid(FieldError::new(f, e)));
        let event = EventId::parse(r.event_id).map_err(|e| invalid("event_id", e))?;
        let user = UserId::parse(r.user_id).map_err(|e| invalid("user_id", e))?;
        let v = self.svc.issuance(&event, &user).await?;
        Ok(Response::new(proto::GetIssuanceResponse {
            event_id: event.to_string(),
            user_id: user.to_string(),
            coupon: Some(convert::coupon(&v.coupon)),
            state: convert::issuance_state(v.state) as i32,
            request_id: v.request_id,
        }))
    }
}
