//! Identifier newtypes. Their `parse` is the only way in, so a value of these
//! types is always valid.

use std::fmt;

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Event id: 1 to 64 characters of `[A-Za-z0-9_-]`. The charset keeps it safe
/// inside Redis hash tags (`{E}`) and Kafka keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("may contain only A-Z, a-z, 0-9, '_' and '-'".into());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// User id: 1 to 128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if has_control(&s) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Caller's correlation id: 0 to 128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestId(String);

impl RequestId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if has_control(&s) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// A request id of the server's own, `srv-` and 96 random bits, for a
    /// request that came without one.
    pub fn server_made(rng: &mut impl rand::Rng) -> Self {
        Self(format!("srv-{:024x}", rng.random::<u128>() >> 32))
    }
}

/// Code prefix: 0 to 16 characters of `[A-Z0-9-]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CodePrefix(String);

impl CodePrefix {
    pub const MAX_LEN: usize = 16;

    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("may contain only A-Z, 0-9 and '-'".into());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_accepts_the_documented_charset_and_bounds() {
        assert!(EventId::parse("a").is_ok());
        assert!(EventId::parse("Flash_Sale-2026").is_ok());
        assert!(EventId::parse("x".repeat(64)).is_ok());
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse("x".repeat(65)).is_err());
        for bad in ["a b", "a{b}", "é", "a/b", "a\n", "a:b"] {
            assert!(EventId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn user_id_counts_characters_and_rejects_control_characters() {
        assert!(UserId::parse("user-1").is_ok());
        assert!(UserId::parse("é".repeat(128)).is_ok());
        assert!(UserId::parse("é".repeat(129)).is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a\u{0}b").is_err());
        assert!(UserId::parse("a\u{7f}").is_err());
        assert!(UserId::parse("tab\there").is_err());
    }

    #[test]
    fn request_id_may_be_empty_but_not_long_or_controlled() {
        assert!(RequestId::parse("").is_ok());
        assert!(RequestId::parse("r".repeat(129)).is_err());
        assert!(RequestId::parse("a\rb").is_err());
    }

    #[test]
    fn prefix_allows_uppercase_digits_and_dash_only() {
        assert!(CodePrefix::parse("").is_ok());
        assert!(CodePrefix::parse("SALE-26").is_ok());
        assert!(CodePrefix::parse("sale").is_err());
        assert!(CodePrefix::parse("A".repeat(17)).is_err());
        assert!(CodePrefix::parse("A_B").is_err());
    }
}
