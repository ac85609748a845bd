//! The one mapping from domain errors to gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::CouponError;

/// When a client should retry an event that is offline (a rebuild takes
/// seconds).
const RETRY_EVENT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl From<CouponError> for Status {
    fn from(e: CouponError) -> Self {
        // No catch-all arm: a new error variant must decide its code here.
        match e {
            CouponError::Invalid(f) => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(f.field.clone(), f.reason.clone());
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("{}: {}", f.field, f.reason),
                    details,
                )
            }
            e @ CouponError::EventExists { .. } => {
                Status::already_exists(format!("{e}; nothing changed"))
            }
            e @ CouponError::PreloadFailed { .. } => Status::unavailable(format!(
                "{e}; nothing was left behind: call Preload again to start over"
            )),
            e @ CouponError::PreloadRunning { .. } => Status::deadline_exceeded(format!(
                "{e}; the job goes on in the server: call Preload again to keep waiting, \
                 or watch GetEvent"
            )),
            CouponError::EventNotFound(id) => Status::not_found(format!("event {id} not found")),
            e @ CouponError::NotLive { .. } => Status::failed_precondition(e.to_string()),
            e @ CouponError::Expired(_) => {
                Status::failed_precondition(format!("{e}; nothing changed"))
            }
            e @ CouponError::IssuanceNotFound { .. } => Status::not_found(e.to_string()),
            e @ CouponError::EventUnavailable { .. } => {
                // An expected state (a rebuild), not a fault of ours: no log.
                let details = ErrorDetails::with_retry_info(Some(RETRY_EVENT_AFTER));
                Status::with_error_details(
                    Code::Unavailable,
                    format!("{e}; nothing was issued: retry shortly"),
                    details,
                )
            }
            CouponError::OutcomeUnknown { context, source } => {
                tracing::error!(error = ?source, "{context}");
                Status::deadline_exceeded(format!(
                    "{context}; the outcome is unknown: ask again with the same request_id \
                     (an issuance it made is answered ISSUED with the same coupon)"
                ))
            }
            CouponError::Unavailable { context, source } => {
                // The client sees what failed; the log keeps the whole chain.
                tracing::error!(error = ?source, "{context}");
                Status::unavailable(format!("{context}; safe to retry"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FieldError;

    #[test]
    fn invalid_input_names_the_field_in_message_and_details() {
        let s: Status =
            CouponError::Invalid(FieldError::new("user_id", "must not be empty")).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("user_id"));
        let br = s.get_details_bad_request().expect("bad request details");
        assert_eq!(br.field_violations[0].field, "user_id");
    }
}
