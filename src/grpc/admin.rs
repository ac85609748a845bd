//! `coupon.v1.CouponAdmin`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use chrono::{DurationRound, Utc};

use crate::domain::control::parse_reason;
use crate::domain::{Control, CouponError, EventId, FieldError, NewEvent, PreloadInput};
use crate::grpc::convert;
use crate::proto;
use crate::proto::coupon_admin_server::CouponAdmin;
use crate::proto::wire::to_datetime;
use crate::service::admin::MAX_PAGE;
use crate::service::AdminService;

/// Events per ListEvents page when the caller names no size.
const DEFAULT_PAGE: u32 = 100;
/// A wait ends this long before the deadline, so the caller still gets the
/// answer (DEADLINE_EXCEEDED with the job's progress) instead of a bare
/// cancellation.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);

pub struct AdminApi {
    svc: Arc<AdminService>,
    /// The server's cap on a call (see `LimitSettings::request_timeout_ms`).
    request_cap: Duration,
}

impl AdminApi {
    pub fn new(svc: Arc<AdminService>, request_cap: Duration) -> Self {
        Self { svc, request_cap }
    }
}

fn invalid(e: FieldError) -> Status {
    CouponError::Invalid(e).into()
}

/// When a call must be answered: its `grpc-timeout`, within the server's
/// cap, less the margin.
fn answer_by<T>(req: &Request<T>, cap: Duration) -> Instant {
    let client = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let budget = client.map_or(cap, |c| c.min(cap));
    Instant::now() + budget.saturating_sub(ANSWER_MARGIN)
}

/// `grpc-timeout` is up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl CouponAdmin for AdminApi {
    async fn preload(
        &self,
        req: Request<proto::PreloadRequest>,
    ) -> Result<Response<proto::PreloadResponse>, Status> {
        let deadline = answer_by(&req, self.request_cap);
        let input = PreloadInput::try_from(req.into_inner()).map_err(invalid)?;
        let event = NewEvent::parse(input).map_err(invalid)?;
        let live = self.svc.preload(event, deadline).await?;
        Ok(Response::new(convert::preload_response(&live)))
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

    async fn list_events(
        &self,
        req: Request<proto::ListEventsRequest>,
    ) -> Result<Response<proto::ListEventsResponse>, Status> {
        let r = req.into_inner();
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            n => {
                return Err(invalid(FieldError::new(
                    "page_size",
                    format!("must be 0..={MAX_PAGE}, got {n}"),
                )))
            }
        };
        // The token is the last event id of the previous page.
        if !r.page_token.is_empty() {
            EventId::parse(r.page_token.clone()).map_err(|_| {
                invalid(FieldError::new(
                    "page_token",
                    "is not a token ListEvents gave",
                ))
            })?;
        }
        let views = self.svc.events(&r.page_token, size).await?;
        let next_page_token = match views.last() {
            Some(v) if views.len() == size as usize => v.event.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListEventsResponse {
            events: views.iter().map(convert::event).collect(),
            next_page_token,
        }))
    }

    async fn pause_event(
        &self,
        req: Request<proto::PauseEventRequest>,
    ) -> Result<Response<proto::PauseEventResponse>, Status> {
        let r = req.into_inner();
        let event = self.control(&r.event_id, Control::Pause, &r.reason).await?;
        Ok(Response::new(proto::PauseEventResponse { event }))
    }

    async fn resume_event(
        &self,
        req: Request<proto::ResumeEventRequest>,
    ) -> Result<Response<proto::ResumeEventResponse>, Status> {
        let r = req.into_inner();
        let event = self
            .control(&r.event_id, Control::Resume, &r.reason)
            .await?;
        Ok(Response::new(proto::ResumeEventResponse { event }))
    }

    async fn close_event(
        &self,
        req: Request<proto::CloseEventRequest>,
    ) -> Result<Response<proto::CloseEventResponse>, Status> {
        let r = req.into_inner();
        // Milliseconds: what Redis keeps of the window.
        let now = Utc::now()
            .duration_trunc(chrono::Duration::milliseconds(1))
            .unwrap_or_else(|_| Utc::now());
        let event = self
            .control(&r.event_id, Control::Close(now), &r.reason)
            .await?;
        Ok(Response::new(proto::CloseEventResponse { event }))
    }

    async fn extend_event(
        &self,
        req: Request<proto::ExtendEventRequest>,
    ) -> Result<Response<proto::ExtendEventResponse>, Status> {
        let r = req.into_inner();
        let ends_at = r
            .ends_at
            .as_ref()
            .ok_or_else(|| invalid(FieldError::new("ends_at", "is required")))
            .and_then(|t| {
                to_datetime(t).ok_or_else(|| {
                    invalid(FieldError::new(
                        "ends_at",
                        "timestamp out of range: must lie in years 1 to 9999 with nanos 0..1e9",
                    ))
                })
            })?;
        let ends_at = ends_at
            .duration_trunc(chrono::Duration::milliseconds(1))
            .unwrap_or(ends_at);
        let event = self
            .control(&r.event_id, Control::Extend(ends_at), &r.reason)
            .await?;
        Ok(Response::new(proto::ExtendEventResponse { event }))
    }
}

impl AdminApi {
    /// Parses the event id and the reason, applies the control, and
    /// converts the event it leaves.
    async fn control(
        &self,
        event_id: &str,
        control: Control,
        reason: &str,
    ) -> Result<Option<proto::Event>, Status> {
        let id = EventId::parse(event_id.to_owned())
            .map_err(|r| invalid(FieldError::new("event_id", r)))?;
        let reason = parse_reason(reason).map_err(invalid)?;
        let view = self.svc.control(&id, control, &reason).await?;
        Ok(Some(convert::event(&view)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("123456789S"), None, "at most 8 digits");
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
