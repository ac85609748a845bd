//! Issue requests and their outcomes.

use chrono::{DateTime, Utc};

use crate::domain::error::FieldError;
use crate::domain::event::Discount;
use crate::domain::ids::{EventId, RequestId, UserId};

/// A validated request to issue one user a coupon of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueCommand {
    pub event_id: EventId,
    pub user_id: UserId,
    pub request_id: RequestId,
}

impl IssueCommand {
    /// The command with a request id of the server's own when it came
    /// without one: the server's retry of a batch whose Redis reply was
    /// lost then recognises what the first run issued to this very request
    /// (ISSUED, and published), instead of answering ALREADY_ISSUED.
    pub fn with_own_request_id(mut self, rng: &mut impl rand::Rng) -> Self {
        if self.request_id.as_str().is_empty() {
            self.request_id = RequestId::server_made(rng);
        }
        self
    }

    pub fn parse(
        event_id: impl Into<String>,
        user_id: impl Into<String>,
        request_id: impl Into<String>,
    ) -> Result<Self, FieldError> {
        Ok(Self {
            event_id: EventId::parse(event_id).map_err(|r| FieldError::new("event_id", r))?,
            user_id: UserId::parse(user_id).map_err(|r| FieldError::new("user_id", r))?,
            request_id: RequestId::parse(request_id)
                .map_err(|r| FieldError::new("request_id", r))?,
        })
    }
}

/// A coupon held by a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCoupon {
    pub code: String,
    pub discount: Discount,
    pub issued_at: DateTime<Utc>,
}

/// What an issue request achieved. Every variant is a normal business
/// outcome, reported inside an OK response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    Issued(IssuedCoupon),
    AlreadyIssued(IssuedCoupon),
    SoldOut,
    NotStarted,
    Ended,
    EventNotFound,
    /// The event is paused by an operator; nothing was issued.
    Paused,
    /// The coupon this user was issued is recorded in PostgreSQL for
    /// another user: the user holds none (see `IssuanceState::Conflicted`).
    Conflicted(IssuedCoupon),
}

impl IssueOutcome {
    /// What a user who holds `coupon` is answered, whatever the event's
    /// state: ISSUED when the coupon was recorded under the asking
    /// request's own (non-empty) id (a repeat of a request whose answer was
    /// lost), ALREADY_ISSUED otherwise, CONFLICTED when PostgreSQL refused
    /// it. What a user holds decides before the window, a pause or stock.
    pub fn for_holder(
        coupon: IssuedCoupon,
        state: IssuanceState,
        recorded_request: &str,
        asking: &RequestId,
    ) -> Self {
        let own = !asking.as_str().is_empty() && recorded_request == asking.as_str();
        match state {
            IssuanceState::Conflicted => Self::Conflicted(coupon),
            _ if own => Self::Issued(coupon),
            _ => Self::AlreadyIssued(coupon),
        }
    }
}

/// Whether an issuance has been recorded in PostgreSQL yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuanceState {
    Pending,
    Finalized,
    /// PostgreSQL refused it, recording the code for another user. Final:
    /// no longer republished, reported by reconcile.
    Conflicted,
}

/// A user's issuance of one event: what the `coupon-issued` message carries
/// and what finalization records in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceRecord {
    pub event_id: EventId,
    pub user_id: UserId,
    pub coupon: IssuedCoupon,
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_answered_by_what_they_hold() {
        let coupon = IssuedCoupon {
            code: "C".into(),
            discount: Discount::new(crate::domain::DiscountType::Percent, 5).unwrap(),
            issued_at: Utc::now(),
        };
        let r = |s: &str| RequestId::parse(s).unwrap();
        let answer = |state, recorded, asking: &str| {
            IssueOutcome::for_holder(coupon.clone(), state, recorded, &r(asking))
        };
        use IssuanceState::*;
        assert_eq!(
            answer(Pending, "r1", "r1"),
            IssueOutcome::Issued(coupon.clone())
        );
        assert_eq!(
            answer(Finalized, "r1", "r1"),
            IssueOutcome::Issued(coupon.clone())
        );
        assert_eq!(
            answer(Finalized, "r1", "r2"),
            IssueOutcome::AlreadyIssued(coupon.clone())
        );
        assert_eq!(
            answer(Pending, "", ""),
            IssueOutcome::AlreadyIssued(coupon.clone()),
            "without a request id a repeat cannot be told from a new ask"
        );
        assert_eq!(
            answer(Conflicted, "r1", "r1"),
            IssueOutcome::Conflicted(coupon.clone())
        );
    }

    #[test]
    fn a_request_without_an_id_gets_one_of_the_servers() {
        let mut rng = rand::rng();
        let c = IssueCommand::parse("e", "u", "")
            .unwrap()
            .with_own_request_id(&mut rng);
        assert!(c.request_id.as_str().starts_with("srv-"), "{c:?}");
        assert_eq!(c.request_id.as_str().len(), 28);
        let own = IssueCommand::parse("e", "u", "r1")
            .unwrap()
            .with_own_request_id(&mut rng);
        assert_eq!(own.request_id.as_str(), "r1");
    }

    #[test]
    fn issue_command_names_the_bad_field() {
        assert!(IssueCommand::parse("e", "u", "").is_ok());
        assert_eq!(
            IssueCommand::parse("", "u", "").unwrap_err().field,
            "event_id"
        );
        assert_eq!(
            IssueCommand::parse("e", "", "").unwrap_err().field,
            "user_id"
        );
        assert_eq!(
            IssueCommand::parse("e", "u", "\u{7}").unwrap_err().field,
            "request_id"
        );
    }
}
