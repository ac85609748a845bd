//! Every way an Issue request ends, classified once: the status code a
//! unary call gets, the result a stream item gets, and the metric label
//! both are counted under (the per-RPC layer and the stream count with
//! these). `grpc::status` builds the Status from the code chosen here.

use tonic::Code;

use crate::domain::{CouponError, IssueOutcome};
use crate::proto::IssueResult as R;

/// What a request that failed is told: a unary call's status code, and a
/// stream item's result (the same outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub code: Code,
    pub result: R,
}

/// The one classification of a failure. No catch-all arm: a new error
/// must decide here what it tells a client.
pub fn failure(e: &CouponError) -> Failure {
    let (code, result) = match e {
        CouponError::Invalid(_) => (Code::InvalidArgument, R::Invalid),
        CouponError::OutcomeUnknown { .. } => (Code::DeadlineExceeded, R::Unknown),
        CouponError::Unavailable { .. } | CouponError::EventUnavailable { .. } => {
            (Code::Unavailable, R::Unavailable)
        }
        // Not answers to Issue (admin calls and lookups): their codes.
        CouponError::EventExists { .. } => (Code::AlreadyExists, R::Invalid),
        CouponError::PreloadFailed { .. } => (Code::Unavailable, R::Unavailable),
        CouponError::PreloadRunning { .. } => (Code::DeadlineExceeded, R::Unknown),
        CouponError::EventNotFound(_) | CouponError::IssuanceNotFound { .. } => {
            (Code::NotFound, R::EventNotFound)
        }
        CouponError::NotLive { .. } | CouponError::Expired(_) | CouponError::Archived(_) => {
            (Code::FailedPrecondition, R::Unavailable)
        }
    };
    Failure { code, result }
}

/// The result an outcome is answered with.
pub fn result(o: &IssueOutcome) -> R {
    match o {
        IssueOutcome::Issued(_) => R::Issued,
        IssueOutcome::AlreadyIssued(_) => R::AlreadyIssued,
        IssueOutcome::SoldOut => R::SoldOut,
        IssueOutcome::NotStarted => R::NotStarted,
        IssueOutcome::Ended => R::Ended,
        IssueOutcome::EventNotFound => R::EventNotFound,
        IssueOutcome::Paused => R::Paused,
        IssueOutcome::Conflicted(_) => R::Conflicted,
    }
}

/// A result's metric label: its proto name, lower case, without the prefix.
pub fn label(r: R) -> &'static str {
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

/// The label of a unary Issue call that failed with `code`: what a stream
/// item failing the same way is counted as (see `failure`).
pub fn label_of_code(code: Code) -> &'static str {
    label(match code {
        Code::InvalidArgument => R::Invalid,
        Code::DeadlineExceeded | Code::Cancelled => R::Unknown,
        _ => R::Unavailable,
    })
}

/// Whether a unary Issue call that ended with `code` was answered by the
/// handler (see `failure`): a call refused before it (a missing token, a
/// message that does not decode or is too large) is no Issue outcome, as
/// a stream's message refused the same way is none either.
pub fn is_issue_answer(code: Code) -> bool {
    matches!(
        code,
        Code::Ok | Code::InvalidArgument | Code::DeadlineExceeded | Code::Unavailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FieldError;

    #[test]
    fn a_unary_failure_and_a_stream_item_failing_alike_count_alike() {
        let unavailable = || CouponError::unavailable("x", anyhow::anyhow!("y"));
        let issue_errors = [
            CouponError::Invalid(FieldError::new("user_id", "empty")),
            CouponError::OutcomeUnknown {
                context: "x",
                source: anyhow::anyhow!("y"),
            },
            unavailable(),
            CouponError::EventUnavailable {
                id: crate::domain::EventId::parse("e").unwrap(),
                reason: "offline",
            },
        ];
        for e in issue_errors {
            let f = failure(&e);
            assert_eq!(label_of_code(f.code), label(f.result), "{e:?}");
            assert!(is_issue_answer(f.code), "{e:?} is counted");
        }
        for refused in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
        ] {
            assert!(
                !is_issue_answer(refused),
                "{refused:?} never reached the handler"
            );
        }
        assert_eq!(label_of_code(Code::Cancelled), "unknown");
    }
}
