//! Operators' controls of a live event.

use chrono::{DateTime, Utc};

use crate::domain::FieldError;

/// What an operator does to a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    /// Ends the window at this time (close: now).
    Close(DateTime<Utc>),
    /// Moves the window's end here.
    Extend(DateTime<Utc>),
}

impl Control {
    /// The name recorded in PostgreSQL.
    pub fn action(&self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Close(_) => "close",
            Control::Extend(_) => "extend",
        }
    }

    /// The window's new end, for close and extend.
    pub fn ends_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Control::Close(t) | Control::Extend(t) => Some(*t),
            _ => None,
        }
    }

    /// Checks the new end against the window's start: it must come after.
    pub fn check_window(&self, starts_at: DateTime<Utc>) -> Result<(), FieldError> {
        match self.ends_at() {
            Some(end) if end <= starts_at => Err(FieldError::new(
                "ends_at",
                format!("must be after the event's starts_at ({starts_at})"),
            )),
            _ => Ok(()),
        }
    }
}

/// What the operators' controls made of an event, as of the `seq`-th
/// control: the window's end and the pause. Controls are numbered in the
/// order PostgreSQL recorded them; Redis takes a state only when it is
/// newer than the one it holds, so a late copy never undoes a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlState {
    pub seq: u64,
    pub ends_at: DateTime<Utc>,
    pub paused: bool,
    /// Settled (ended with nothing pending; its Redis keys expiring): no
    /// control but an extension (which clears it) may take the expiry off.
    pub settled: bool,
}

/// Why an operator controlled an event: 1 to 500 characters, no control
/// characters.
pub fn parse_reason(reason: &str) -> Result<String, FieldError> {
    let n = reason.chars().count();
    if n == 0 || n > 500 {
        return Err(FieldError::new("reason", "must be 1 to 500 characters"));
    }
    if reason.chars().any(char::is_control) {
        return Err(FieldError::new(
            "reason",
            "must not contain control characters",
        ));
    }
    Ok(reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn an_end_before_the_start_or_an_empty_reason_names_the_field() {
        let start = Utc.timestamp_opt(1_000, 0).unwrap();
        let early = Control::Extend(Utc.timestamp_opt(999, 0).unwrap());
        assert_eq!(early.check_window(start).unwrap_err().field, "ends_at");
        assert!(Control::Extend(Utc.timestamp_opt(1_001, 0).unwrap())
            .check_window(start)
            .is_ok());
        assert!(Control::Pause.check_window(start).is_ok());
        assert_eq!(parse_reason("").unwrap_err().field, "reason");
        assert_eq!(parse_reason("a\nb").unwrap_err().field, "reason");
        assert_eq!(parse_reason(&"x".repeat(501)).unwrap_err().field, "reason");
        assert_eq!(parse_reason("flash sale over").unwrap(), "flash sale over");
    }
}
