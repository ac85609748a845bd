//! Pure business types: identifiers, events and policies, allocation, code
//! generation and issue outcomes. Nothing in here knows about gRPC, Redis,
//! Kafka or diesel; the edges convert into these types and every value that
//! exists past the edge is already valid.

pub mod allocation;
pub mod code;
pub mod control;
pub mod error;
pub mod event;
pub mod ids;
pub mod issue;
pub mod preload;
#[cfg(test)]
mod properties;
pub mod shard;
pub mod snapshot;

pub use allocation::allocate;
pub use code::{CodeGenerator, CODE_ALPHABET, DEFAULT_CODE_LENGTH};
pub use control::{Control, ControlState};
pub use error::{CouponError, FieldError};
pub use event::{
    Discount, DiscountType, EventWindow, NewEvent, Policy, PolicyInput, PreloadInput, StoredEvent,
};
pub use ids::{CodePrefix, EventId, RequestId, UserId};
pub use issue::{IssuanceRecord, IssuanceState, IssueCommand, IssueOutcome, IssuedCoupon};
pub use preload::{EventState, PolicyDeck, PreloadId, PreloadStatus, PreloadTimings};
pub use snapshot::{HeldCoupon, LiveState, RecordedCoupon};
