//! Each event's shard count as PostgreSQL records it. An event keeps its
//! count for life once it is LIVE (a user's home shard is a hash of the
//! user id modulo it), so a process reads it once and keeps it; an event
//! not yet LIVE is read again each time (a FAILED preload may be started
//! over with another count).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::domain::EventId;

/// Shard counts read so far; cheap to clone, shared by the clones.
#[derive(Clone, Default)]
pub struct ShardCounts {
    known: Arc<RwLock<HashMap<EventId, u32>>>,
}

impl ShardCounts {
    /// The count of `event` when it was read LIVE before.
    pub fn known(&self, event: &EventId) -> Option<u32> {
        self.known.read().expect("lock").get(event).copied()
    }

    /// Keeps `shards` for `event` when `live`; returns `shards` (1 for an
    /// event PostgreSQL does not hold: it has one set of keys, if any).
    pub fn read(&self, event: &EventId, row: Option<(u32, bool)>) -> u32 {
        match row {
            Some((shards, true)) => {
                self.known
                    .write()
                    .expect("lock")
                    .insert(event.clone(), shards);
                shards
            }
            Some((shards, false)) => shards,
            None => 1,
        }
    }
}
