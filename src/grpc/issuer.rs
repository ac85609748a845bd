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
use crate::grpc::observe::Told;
use crate::grpc::outcome::{failure, label};
use crate::metrics::{self, Rpc};
use crate::proto;
use crate::proto::coupon_issuer_server::CouponIssuer;
use crate::service::IssuerService;
use crate::supervisor::{Kind, Spawner};

pub struct IssuerApi {
    svc: Arc<IssuerService>,
    stream_in_flight: usize,
    /// Starts each stream's responder (the drain waits for them).
    spawner: Spawner,
}

impl IssuerApi {
    pub fn new(svc: Arc<IssuerService>, stream_in_flight: usize, spawner: Spawner) -> Self {
        Self {
            svc,
            stream_in_flight: stream_in_flight.max(1),
            spawner,
        }
    }
}

type ItemFuture = Pin<Box<dyn Future<Output = proto::IssueResponse> + Send>>;

/// One stream item: never fails, every problem becomes a result value,
/// counted as it is answered.
fn stream_item(svc: Arc<IssuerService>, req: proto::IssueRequest) -> ItemFuture {
    Box::pin(async move {
        let started = Instant::now();
        let request_id = req.request_id.clone();
        let resp = match answer(&svc, req).await {
            Ok(r) => r,
            Err(e) => {
                let result = failure(&e).result;
                let detail = Status::from(e).message().to_owned();
                convert::issue_failure(request_id, result, detail)
            }
        };
        let result = proto::IssueResult::try_from(resp.result).unwrap_or_default();
        metrics::issue_answered(Rpc::IssueStream, label(result), started.elapsed());
        resp
    })
}

/// One request's answer, unary or streamed alike.
async fn answer(
    svc: &IssuerService,
    r: proto::IssueRequest,
) -> Result<proto::IssueResponse, CouponError> {
    // The ids move into the command; only the echoed request id is copied.
    let cmd = IssueCommand::parse(r.event_id, r.user_id, r.request_id.as_str())?;
    let a = svc.issue(cmd).await?;
    Ok(convert::issue_response(r.request_id, &a.outcome, a.durable))
}

#[tonic::async_trait]
impl CouponIssuer for IssuerApi {
    /// Counted by the per-RPC layer (`grpc::observe`), under the label
    /// told here or, for a failed call, the one its status implies.
    async fn issue(
        &self,
        req: Request<proto::IssueRequest>,
    ) -> Result<Response<proto::IssueResponse>, Status> {
        let r = answer(&self.svc, req.into_inner()).await?;
        let told = label(proto::IssueResult::try_from(r.result).unwrap_or_default());
        let mut res = Response::new(r);
        res.extensions_mut().insert(Told(told));
        Ok(res)
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
        self.spawner.spawn(Kind::Stream, async move {
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
