//! `coupon.v1.CouponAdmin`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::{CouponError, EventId, FieldError, NewEvent, PreloadInput};
use crate::grpc::convert;
use crate::proto;
use crate::proto::coupon_admin_server::CouponAdmin;
use crate::service::AdminService;

pub struct AdminApi {
    svc: Arc<AdminService>,
}

impl AdminApi {
    pub fn new(svc: Arc<AdminService>) -> Self {
        Self { svc }
    }
}

fn invalid(e: FieldError) -> Status {
    CouponError::Invalid(e).into()
}

#[tonic::async_trait]
impl CouponAdmin for AdminApi {
    async fn preload(
        &self,
        req: Request<proto::PreloadRequest>,
    ) -> Result<Response<proto::PreloadResponse>, Status> {
        let input = PreloadInput::try_from(req.into_inner()).map_err(invalid)?;
        let event = NewEvent::parse(input).map_err(invalid)?;
        let r = self.svc.preload(event).await?;
        Ok(Response::new(proto::PreloadResponse {
            event_id: r.event_id.to_string(),
            counts_per_policy: r.counts,
            generate_ms: r.generate.as_millis() as u64,
            database_ms: r.database.as_millis() as u64,
            redis_ms: r.redis.as_millis() as u64,
            total_ms: r.total.as_millis() as u64,
        }))
    }

    async fn get_event(
        &self,
        req: Request<proto::GetEventRequest>,
    ) -> Result<Response<proto::Event>, Status> {
        let id = EventId::parse(req.into_inner().event_id)
            .map_err(|r| invalid(FieldError::new("event_id", r)))?;
        let view = self.svc.event(&id).await?;
        Ok(Response::new(convert::event(&view)))
    }
}
