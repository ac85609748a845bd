//! The preload job's pure parts: its states, its fencing token, the order in
//! which policies are dealt into the queue, and what makes two preload
//! requests "the same".

use std::time::Duration;

use rand::{Rng, RngCore};

/// Where an event's preload job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// The job is writing codes; Issue does not see the event yet.
    Preparing,
    /// Every code is in PostgreSQL and live in Redis.
    Live,
    /// The job failed and removed what it had written.
    Failed,
}

impl EventState {
    /// Stable text form, as PostgreSQL stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Preparing => "PREPARING",
            EventState::Live => "LIVE",
            EventState::Failed => "FAILED",
        }
    }

    pub fn from_str_opt(s: &str) -> Option<Self> {
        match s {
            "PREPARING" => Some(EventState::Preparing),
            "LIVE" => Some(EventState::Live),
            "FAILED" => Some(EventState::Failed),
            _ => None,
        }
    }
}

/// A preload job's fencing token: drawn anew by every job (and by every
/// takeover of a job), checked by every write the job makes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PreloadId(String);

impl PreloadId {
    /// 128 random bits, hex.
    pub fn random(rng: &mut impl RngCore) -> Self {
        Self(format!("{:032x}", rng.random::<u128>()))
    }

    /// An id read back from a store (not validated: stores only hold ids
    /// this type made).
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PreloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How long each part of a finished preload took. Generation, the database
/// and Redis overlap, so `total` is less than their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PreloadTimings {
    pub generate: Duration,
    pub database: Duration,
    pub redis: Duration,
    pub total: Duration,
}

/// An event's preload job as stored with the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadStatus {
    pub state: EventState,
    pub preload_id: PreloadId,
    /// Coupons committed to PostgreSQL so far.
    pub written: u32,
    /// Why the job failed (FAILED only).
    pub failure: Option<String>,
    /// Set once LIVE (events made live by a job).
    pub timings: Option<PreloadTimings>,
}

/// Deals policy positions in a uniformly random order without holding the
/// whole event: each draw picks a policy with probability proportional to
/// the coupons it has left, which is sampling without replacement, so the
/// sequence is a uniform shuffle of the multiset and every policy ends with
/// exactly its count.
#[derive(Debug, Clone)]
pub struct PolicyDeck {
    left: Vec<u32>,
    total_left: u64,
}

impl PolicyDeck {
    pub fn new(counts: &[u32]) -> Self {
        Self {
            left: counts.to_vec(),
            total_left: counts.iter().map(|&c| u64::from(c)).sum(),
        }
    }

    /// Coupons not yet dealt.
    pub fn remaining(&self) -> u64 {
        self.total_left
    }

    /// The next `n` positions (fewer at the end of the deck).
    pub fn deal(&mut self, rng: &mut impl RngCore, n: usize) -> Vec<i16> {
        let mut out = Vec::with_capacity(n.min(self.total_left as usize));
        while out.len() < n && self.total_left > 0 {
            let mut pick = rng.random_range(0..self.total_left);
            let pos = self
                .left
                .iter()
                .position(|&c| {
                    if pick < u64::from(c) {
                        true
                    } else {
                        pick -= u64::from(c);
                        false
                    }
                })
                .expect("a pick below total_left falls in some policy");
            self.left[pos] -= 1;
            self.total_left -= 1;
            out.push(pos as i16);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn the_deck_deals_exactly_each_count_and_interleaves() {
        let mut rng = StdRng::seed_from_u64(7);
        let counts = [5_000, 3_000, 2_000, 0, 1];
        let mut deck = PolicyDeck::new(&counts);
        let mut seen = [0u32; 5];
        let mut first = Vec::new();
        while deck.remaining() > 0 {
            let chunk = deck.deal(&mut rng, 777);
            assert!(!chunk.is_empty() && chunk.len() <= 777);
            if first.is_empty() {
                first = chunk.clone();
            }
            for p in chunk {
                seen[p as usize] += 1;
            }
        }
        assert_eq!(seen, counts);
        assert!(deck.deal(&mut rng, 10).is_empty());
        // The first chunk already mixes the three large policies.
        for p in 0..3 {
            assert!(first.contains(&p), "policy {p} in the first chunk");
        }
    }

    #[test]
    fn states_round_trip_their_text() {
        for s in [EventState::Preparing, EventState::Live, EventState::Failed] {
            assert_eq!(EventState::from_str_opt(s.as_str()), Some(s));
        }
        assert_eq!(EventState::from_str_opt("live"), None);
    }

    #[test]
    fn preload_ids_are_distinct_and_hex() {
        let mut rng = rand::rng();
        let a = PreloadId::random(&mut rng);
        let b = PreloadId::random(&mut rng);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
