use crate::domain::ids::EventId;

/// A rejected input value: which field, and why. Field paths use the proto
/// names (`policies[1].weight`) so a client can act on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the offending field, in proto field names.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Every failure a coupond operation can report to a caller. The gRPC edge
/// maps each variant to exactly one status code (see `grpc::status`).
#[derive(Debug, thiserror::Error)]
pub enum CouponError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] FieldError),
    /// An event with this id exists with other content; `difference` names
    /// the first field that differs.
    #[error("event {id} already exists with other content: {difference}")]
    EventExists { id: EventId, difference: String },
    /// The event's preload job failed and removed what it had written.
    #[error("preload of event {id} failed: {reason}")]
    PreloadFailed { id: EventId, reason: String },
    /// The event's preload job is still running; the caller stopped waiting.
    #[error("preload of event {id} is still running ({written} of {total} coupons written)")]
    PreloadRunning {
        id: EventId,
        written: u32,
        total: u32,
    },
    #[error("event {0} not found")]
    EventNotFound(EventId),
    /// A control of an event that is not LIVE.
    #[error("event {id} is {state}, not LIVE: only a live event can be controlled")]
    NotLive { id: EventId, state: &'static str },
    /// The event cannot be served now and nothing was issued: a forced
    /// rebuild has it offline, or Redis lost it. Asking again is safe.
    #[error("event {id} is {reason}")]
    EventUnavailable { id: EventId, reason: &'static str },
    /// A control of an event that ended and whose Redis keys expired after
    /// retention: nothing in Redis to apply it to.
    #[error(
        "event {0} ended and its redis state expired after retention: rebuild it first \
         (coupond reconcile --event {0} --rebuild-redis), then control it"
    )]
    Expired(EventId),
    /// A control of an event whose coupons were archived (`coupond
    /// archive`): it is over for good.
    #[error("event {0} is archived: it cannot be controlled, rebuilt or reopened")]
    Archived(EventId),
    #[error("user {user_id} holds no coupon of event {event_id}")]
    IssuanceNotFound { event_id: String, user_id: String },
    /// The request may or may not have taken effect: a store took it but
    /// its answer never came. Asking again (idempotent) tells which.
    #[error("{context}")]
    OutcomeUnknown {
        context: &'static str,
        #[source]
        source: anyhow::Error,
    },
    /// A backing service (Redis, PostgreSQL, Kafka) failed; nothing was left
    /// half-done. The source keeps the full chain for the log.
    #[error("{context}")]
    Unavailable {
        context: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

impl CouponError {
    /// A backing service failed. Made once per failed operation, where its
    /// cause is known: this is where the cause's whole chain is logged (the
    /// client is told only the context).
    pub fn unavailable(context: &'static str, source: impl Into<anyhow::Error>) -> Self {
        let source = source.into();
        tracing::warn!(error = format!("{source:#}"), "{context}");
        Self::Unavailable { context, source }
    }
}
