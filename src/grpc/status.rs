//! The one mapping from domain errors to gRPC statuses.

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::CouponError;
use crate::grpc::outcome::failure;

/// When a client should retry an event that is offline (a rebuild takes
/// seconds).
const RETRY_EVENT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl From<CouponError> for Status {
    /// The code comes from the one classification (`grpc::outcome`); this
    /// adds the message and the details a client acts on. It logs nothing:
    /// the per-RPC layer (`grpc::observe`) logs each call by its status, and
    /// a failure's cause is logged where it happened.
    fn from(e: CouponError) -> Self {
        let code = failure(&e).code;
        match e {
            CouponError::Invalid(f) => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(f.field.clone(), f.reason.clone());
                Status::with_error_details(code, format!("{}: {}", f.field, f.reason), details)
            }
            e @ (CouponError::EventExists { .. }
            | CouponError::Expired(_)
            | CouponError::Archived(_)) => Status::new(code, format!("{e}; nothing changed")),
            e @ CouponError::PreloadFailed { .. } => Status::new(
                code,
                format!("{e}; nothing was left behind: call Preload again to start over"),
            ),
            e @ CouponError::PreloadRunning { .. } => Status::new(
                code,
                format!(
                    "{e}; the job goes on in the server: call Preload again to keep waiting, \
                     or watch GetEvent"
                ),
            ),
            e @ (CouponError::EventNotFound(_)
            | CouponError::NotLive { .. }
            | CouponError::IssuanceNotFound { .. }) => Status::new(code, e.to_string()),
            e @ CouponError::EventUnavailable { .. } => {
                let details = ErrorDetails::with_retry_info(Some(RETRY_EVENT_AFTER));
                Status::with_error_details(
                    code,
                    format!("{e}; ask again shortly, with the same request_id"),
                    details,
                )
            }
            CouponError::OutcomeUnknown { context, .. } => Status::new(
                code,
                format!(
                    "{context}; the outcome is unknown: ask again with the same request_id \
                     (an issuance it made is answered ISSUED with the same coupon)"
                ),
            ),
            // The client sees what failed; the cause was logged where it
            // happened.
            CouponError::Unavailable { context, .. } => {
                Status::new(code, format!("{context}; safe to retry"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FieldError;
    use tonic::Code;

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
