//! Where the shards of an event live and which one is a user's home.
//!
//! An event's keys share one hash tag, so the event is one Redis Cluster
//! slot, one master. An event split over K shards gives each shard a tag of
//! its own, chosen so that the K slots lie in K different equal ranges of
//! the slot space: a cluster whose masters own equal contiguous ranges (as
//! `redis-cli --cluster create` makes them) serves each shard from another
//! master. A user belongs to one home shard, decided by a stable hash of
//! the user id, so "one coupon per user" is still one atomic script.

use crate::domain::{EventId, UserId};

/// Redis Cluster's slots.
pub const SLOTS: u32 = 16_384;

/// Most shards an event may have.
pub const MAX_SHARDS: u32 = 16;

/// Redis Cluster's slot of a hash tag: CRC16 (XMODEM) of it, mod 16384.
pub fn slot(tag: &str) -> u32 {
    let mut crc: u16 = 0;
    for &b in tag.as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    u32::from(crc) % SLOTS
}

/// The hash tag of shard `shard` of an event of `shards` shards. An event
/// of one shard keeps its id as the tag (the keys it has always had).
/// Otherwise `<event>.s<shard>.<salt>` with the first salt whose slot lies
/// in the middle half of the shard's range; '.' never occurs in an event
/// id, so no tag of one event is another event's. Tags and homes depend on
/// the shard count: an event keeps its count for life.
pub fn tag(event: &EventId, shard: u32, shards: u32) -> String {
    assert!(
        shard < shards && shards <= MAX_SHARDS,
        "shard {shard} of {shards}"
    );
    if shards == 1 {
        return event.as_str().to_owned();
    }
    // The middle half of the shard's range: masters' ranges made by
    // rounding (redis-cli) may differ from these by a slot at either end.
    let (start, width) = (shard * SLOTS / shards, SLOTS / shards);
    let range = start + width / 4..start + 3 * width / 4;
    (0u32..)
        .map(|salt| format!("{event}.s{shard}.{salt}"))
        .find(|t| range.contains(&slot(t)))
        .expect("a range of at least 512 slots is hit within a few thousand salts")
}

/// The user's home shard: FNV-1a (64 bits) of the user id, mod `shards`.
/// Fixed by the id alone, on every server and in every version (never a
/// randomly keyed hasher).
pub fn home(user: &UserId, shards: u32) -> u32 {
    home_of(user.as_str(), shards)
}

/// `home` of a user id as Redis and PostgreSQL hold it.
pub fn home_of(user: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in user.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // `CLUSTER KEYSLOT` of the same strings.
        assert_eq!(slot("123456789"), 12_739);
        assert_eq!(slot("foo"), 12_182);
        assert_eq!(slot("bar"), 5_061);
        assert_eq!(slot(""), 0);
    }

    /// Tags and homes decide where a live event's keys and users are: the
    /// same inputs must give the same answers in every version.
    #[test]
    fn tags_and_homes_never_change() {
        let e = EventId::parse("drop-1").unwrap();
        let tags: Vec<String> = (0..3).map(|s| tag(&e, s, 3)).collect();
        assert_eq!(tags, ["drop-1.s0.0", "drop-1.s1.2", "drop-1.s2.1"]);
        let home_of = |u: &str, k| home(&UserId::parse(u).unwrap(), k);
        let homes = [
            home_of("user-1", 3),
            home_of("user-2", 3),
            home_of("alice", 3),
            home_of("bob", 3),
        ];
        assert_eq!(homes, [2, 2, 2, 0]);
        assert_eq!((home_of("user-1", 16), home_of("alice", 16)), (4, 7));
    }

    #[test]
    fn one_shard_keeps_the_event_id_as_its_tag() {
        let e = EventId::parse("drop-1").unwrap();
        assert_eq!(tag(&e, 0, 1), "drop-1");
    }

    #[test]
    fn shards_land_in_distinct_equal_slot_ranges() {
        let e = EventId::parse("flash-sale_2026").unwrap();
        for shards in 2..=MAX_SHARDS {
            let tags: Vec<String> = (0..shards).map(|s| tag(&e, s, shards)).collect();
            for (s, t) in tags.iter().enumerate() {
                let s = s as u32;
                let at = slot(t);
                let (start, width) = (s * SLOTS / shards, SLOTS / shards);
                assert!(
                    at >= start + width / 4 && at < start + 3 * width / 4,
                    "{t}: slot {at}, shard {s} of {shards}"
                );
                assert!(t.starts_with("flash-sale_2026.s"), "{t}");
            }
            assert_eq!(
                tags,
                (0..shards).map(|s| tag(&e, s, shards)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn homes_are_stable_and_spread_evenly() {
        let u = UserId::parse("user-42").unwrap();
        assert_eq!(home(&u, 3), home(&u, 3));
        assert_eq!(home(&u, 1), 0);
        let mut per = [0u32; 3];
        for i in 0..30_000 {
            per[home(&UserId::parse(format!("user-{i}")).unwrap(), 3) as usize] += 1;
        }
        for n in per {
            assert!((9_500..10_500).contains(&n), "{per:?}");
        }
    }
}
