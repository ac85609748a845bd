use std::collections::HashSet;

use coupond::domain::{EventId, CODE_ALPHABET};
use redis::AsyncCommands;

use crate::helpers::{preload_request, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_writes_every_code_to_postgres_and_the_redis_queue() {
    let app = spawn_app().await;
    let event = app.event_id("pre");
    let mut req = preload_request(&event, 3000);
    req.code_prefix = "XMAS-".into();
    let r = app.preload(req).await.unwrap();
    assert_eq!(r.event_id, event);
    assert_eq!(r.counts_per_policy, vec![1000, 1000, 1000]);

    let id = EventId::parse(event.clone()).unwrap();
    assert_eq!(app.pg.coupon_count(&id).await.unwrap(), 3000);
    let mut c = app.redis.conn().await.unwrap();
    let entries: Vec<String> = c.lrange(app.keys(&event).queue, 0, -1).await.unwrap();
    assert_eq!(entries.len(), 3000);
    let codes: HashSet<&str> = entries
        .iter()
        .map(|e| e.split('\t').next().unwrap())
        .collect();
    assert_eq!(codes.len(), 3000, "no code twice");
    for code in &codes {
        let body = code.strip_prefix("XMAS-").expect("prefix");
        assert_eq!(body.len(), 12);
        assert!(body.bytes().all(|b| CODE_ALPHABET.contains(&b)), "{code}");
    }
    // Shuffled: the first 100 entries are not all of one policy.
    let first_kinds: HashSet<&str> = entries[..100]
        .iter()
        .map(|e| e.split_once('\t').unwrap().1)
        .collect();
    assert!(first_kinds.len() > 1, "policies interleave in the queue");
    let staging: bool = c.exists(app.keys(&event).staging).await.unwrap();
    assert!(!staging, "the staging list became the queue");
}
