//! Preload jobs under faults: the server SIGKILLed mid-job, Redis replies
//! delayed past the client's timeout or lost with their connections. Each
//! ends with the event LIVE and consistent, nothing left behind, and users
//! issued and finalized from it.

use std::time::Duration;

use coupond::domain::{EventId, EventState, PreloadId};
use coupond::proto;
use coupond::store::redis::{FenceReply, PreloadStepError, RedisTimeouts};
use coupond::store::RedisStore;
use tokio_util::sync::CancellationToken;

use crate::common::{
    assert_live_and_consistent, assert_no_leftovers, await_preload_end, eventually, preload_request,
};
use crate::support::{free_port, redis_cmd, Env, Load, OwnRedis, RestoreStack, SERIAL};

/// Short leases, so a dead server's job is taken over within seconds, and
/// small chunks, so a kill lands mid-job.
pub const JOB_ENV: [(&str, &str); 2] = [
    ("COUPOND_PRELOAD_LEASE_MS", "2000"),
    ("COUPOND_PRELOAD_CHUNK", "20000"),
];

/// Starts `req` (a caller giving up after 300 ms: the job goes on) and
/// waits until the job has written `written` coupons to PostgreSQL.
pub async fn preload_under_way(
    env: &Env,
    req: &proto::PreloadRequest,
    written: u32,
) -> (coupond::store::PgStore, EventId) {
    let first = env
        .preload_within(req.clone(), Duration::from_millis(300))
        .await;
    assert!(
        first.is_err(),
        "{} coupons take longer than 300 ms",
        req.total_count
    );
    let pg = env.pg();
    let id = EventId::parse(req.event_id.clone()).unwrap();
    let progressed = eventually(Duration::from_secs(120), || async {
        pg.event(&id)
            .await
            .unwrap()
            .is_some_and(|e| e.preload.written >= written)
    })
    .await;
    assert!(progressed, "the job wrote {written} coupons");
    (pg, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_killed_mid_preload_is_resumed_and_the_event_ends_live() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    let mut server = env.serve_env(&[], &JOB_ENV).await;
    let event = format!("killed-{}", env.tag);
    let total = 1_000_000;
    let req = preload_request(&event, total);
    let (pg, id) = preload_under_way(&env, &req, 100_000).await;
    let written = || async {
        pg.event(&id)
            .await
            .unwrap()
            .map_or(0, |e| e.preload.written)
    };
    server.kill9();
    let at_kill = written().await;
    let mut server = env.serve_env(&[], &JOB_ENV).await;
    let state = await_preload_end(&pg, &event, Duration::from_secs(120)).await;
    eprintln!("preload kill: {at_kill} of {total} written at the kill; ended {state:?}");
    let redis = env.redis();
    if state == EventState::Failed {
        assert_eq!(
            pg.coupon_count(&id).await.unwrap(),
            0,
            "a failed job leaves nothing"
        );
        assert_no_leftovers(&redis, &event).await;
    }
    // Either way, Preload of the id now answers LIVE (starting over if it
    // had failed), and the event issues and finalizes correctly.
    let r = env
        .preload_within(req, Duration::from_secs(120))
        .await
        .expect("preload after the restart");
    assert_eq!(r.state, proto::EventState::Live as i32);
    assert_live_and_consistent(&pg, &redis, &event, total).await;
    let load = Load::start(&env, &event, 2_000, 8).await;
    let (told, _) = load.finish().await;
    assert_eq!(told.len(), 2_000);
    env.assert_exactly_recorded(&event, &told).await;
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_replies_delayed_or_lost_during_preload_still_end_live() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let _unpause = Unpause;
    let env = Env::new().await;
    let mut server = env.serve_env(&[], &JOB_ENV).await;
    let total = 50_000;

    // Writes stall 1,000 ms (past the 500 ms response timeout) with 100 ms
    // gaps, all through the job: claim, staging and make-live replies come
    // late (a call sent in a stall's first half), and are asked again.
    let stalled = preload_request(&format!("stalled-{}", env.tag), total);
    let stop = CancellationToken::new();
    let stalls = tokio::spawn(repeat(stop.clone(), Duration::from_millis(1100), |c| {
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1000)
            .arg("WRITE")
            .exec(c)
    }));
    let started = std::time::Instant::now();
    let state = preload_to_end(&env, &stalled).await;
    stop.cancel();
    let pauses = stalls.await.unwrap();
    Unpause::now();
    assert_eq!(state, EventState::Live, "preload through stalls");
    eprintln!(
        "preload through {pauses} Redis stalls of 1 s: LIVE after {:?}",
        started.elapsed()
    );
    assert!(pauses > 1, "the job ran through stalls");

    // Every coupond connection killed every 100 ms: replies lost outright.
    let dropped = preload_request(&format!("dropped-{}", env.tag), total);
    let stop = CancellationToken::new();
    let kills = tokio::spawn(repeat(stop.clone(), Duration::from_millis(100), |c| {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .exec(c)
    }));
    let started = std::time::Instant::now();
    let state = preload_to_end(&env, &dropped).await;
    stop.cancel();
    let kills = kills.await.unwrap();
    assert_eq!(
        state,
        EventState::Live,
        "preload through killed connections"
    );
    eprintln!(
        "preload through {kills} rounds of killed Redis connections: LIVE after {:?}",
        started.elapsed()
    );

    let (pg, redis) = (env.pg(), env.redis());
    for req in [&stalled, &dropped] {
        let event = &req.event_id;
        assert_live_and_consistent(&pg, &redis, event, total).await;
        let again = env
            .preload_within(req.clone(), Duration::from_secs(10))
            .await;
        assert!(again.is_ok(), "{again:?}");
        let load = Load::start(&env, event, 500, 8).await;
        let (told, _) = load.finish().await;
        assert_eq!(told.len(), 500);
        env.assert_exactly_recorded(event, &told).await;
    }
    server.terminate().await;
}

/// Starts a preload, lets the caller give up, and waits for the job's end.
async fn preload_to_end(env: &Env, req: &proto::PreloadRequest) -> EventState {
    let _ = env
        .preload_within(req.clone(), Duration::from_secs(5))
        .await;
    await_preload_end(&env.pg(), &req.event_id, Duration::from_secs(180)).await
}

/// Runs `fault` on its own Redis connection every `every` until `stop`;
/// returns how often it ran.
async fn repeat(
    stop: CancellationToken,
    every: Duration,
    fault: impl Fn(&mut redis::Connection) -> redis::RedisResult<()>,
) -> u32 {
    let mut c = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_connection()
        .unwrap();
    let mut n = 0;
    while !stop.is_cancelled() {
        fault(&mut c).expect("fault command");
        n += 1;
        tokio::time::sleep(every).await;
    }
    n
}

/// Lifts any CLIENT PAUSE when a test ends, passed or failed.
struct Unpause;

impl Unpause {
    fn now() {
        let _ = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "CLIENT", "UNPAUSE"])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Unpause {
    fn drop(&mut self) {
        Self::now();
    }
}

/// The step the job's make-live loop relies on, made deterministic. A
/// make-live whose reply is lost either ran or did not; asking again must
/// answer OK in both cases for the job, refuse any other job, and leave the
/// queue holding exactly the staged codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_make_live_whose_reply_was_lost_answers_ok_when_asked_again() {
    let _serial = SERIAL.lock().await;
    let _unpause = Unpause;
    let impatient = RedisStore::connect_with(
        "redis://127.0.0.1:6379",
        2,
        RedisTimeouts {
            response: Duration::from_millis(100),
            connect: Duration::from_secs(1),
        },
    )
    .unwrap();
    let window = (0, i64::MAX / 2);
    // It ran: the first call succeeded, its answer is what got lost.
    let (ran, job) = staged_event(&impatient, "ran").await;
    impatient.make_live(&ran, &job, window, 1000).await.unwrap();
    impatient
        .make_live(&ran, &job, window, 1000)
        .await
        .expect("asked again, the job that made it live hears OK");
    let other = PreloadId::random(&mut rand::rng());
    let refused = impatient.make_live(&ran, &other, window, 1000).await;
    assert!(
        matches!(refused, Err(PreloadStepError::Exists)),
        "{refused:?}"
    );

    // Its reply was late past the client's timeout (writes paused).
    let (late, job) = staged_event(&impatient, "late").await;
    redis_cmd(&["CLIENT", "PAUSE", "600", "WRITE"]);
    let timed_out = impatient.make_live(&late, &job, window, 1000).await;
    assert!(timed_out.is_err(), "the reply came too late: {timed_out:?}");
    let answered = eventually(Duration::from_secs(10), || async {
        impatient.make_live(&late, &job, window, 1000).await.is_ok()
    })
    .await;
    assert!(
        answered,
        "asked again after the stall, make-live answers OK"
    );

    for event in [&ran, &late] {
        assert!(impatient.event_exists(event, 1).await.unwrap());
        assert_eq!(impatient.counts(event, 1).await.unwrap().remaining, 1000);
        assert_no_leftovers(&impatient, event.as_str()).await;
    }
}

/// A fresh event whose job holds the fence and staged 1,000 entries (the
/// chunk staged twice, as a retry after a lost reply would).
async fn staged_event(redis: &RedisStore, name: &str) -> (EventId, PreloadId) {
    let event = EventId::parse(format!("{name}-{}", crate::common::unique_tag())).unwrap();
    let job = PreloadId::random(&mut rand::rng());
    let claimed = redis.claim_preload(&event, &job, None).await.unwrap();
    assert_eq!(claimed, FenceReply::Done);
    let entries: Vec<String> = (0..1000)
        .map(|i| format!("CODE{i:08}\tPERCENT\t10"))
        .collect();
    let staged = redis.stage_chunk(&event, &job, 0, &entries).await.unwrap();
    let again = redis.stage_chunk(&event, &job, 0, &entries).await.unwrap();
    assert_eq!(
        (staged, again),
        (1000, 1000),
        "a repeated chunk changes nothing"
    );
    (event, job)
}

/// A job whose server died holds the Redis fence; the server that takes it
/// over cannot reach Redis past its retries and fails. Nothing of that
/// chain may keep the id from being preloaded again: a job takes a fence
/// from an id PostgreSQL no longer names, and a failing job drops its dead
/// predecessor's fence (see the store test below).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_failing_while_redis_is_down_never_blocks_the_event_id() {
    let _serial = SERIAL.lock().await;
    let mut redis = OwnRedis::start(true).await;
    let mut env = Env::new().await;
    env.settings.redis.url = redis.url();
    let job_env = [
        JOB_ENV[0],
        JOB_ENV[1],
        ("COUPOND_PRELOAD_STEP_BUDGET_MS", "2000"),
    ];
    let mut first = env.serve_env(&[], &job_env).await;
    // A second server, ready to take the job over once its lease ran out.
    let second_env = Env {
        tag: env.tag.clone(),
        settings: env.settings.clone(),
        port: free_port(),
    };
    let mut second = second_env.serve_env(&["--no-consumer"], &job_env).await;
    let event = format!("fence-{}", env.tag);
    let total = 1_000_000;
    let req = preload_request(&event, total);
    assert!(env
        .preload_within(req.clone(), Duration::from_millis(300))
        .await
        .is_err());
    let pg = env.pg();
    let id = EventId::parse(event.clone()).unwrap();
    let job_of = || async { pg.event(&id).await.unwrap().unwrap().preload };
    let progressed = eventually(Duration::from_secs(60), || async {
        job_of().await.written >= 100_000
    })
    .await;
    assert!(progressed, "the first job made progress");
    let dead = job_of().await.preload_id;
    first.kill9(); // its fence stays in Redis
    redis.kill9(); // before the lease runs out and the second server takes over
    let taken = eventually(Duration::from_secs(30), || async {
        job_of().await.preload_id != dead
    })
    .await;
    assert!(taken, "the second server took the job over in postgres");
    // Down past the takeover's 2 s of retries: the outage being tested.
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.restart().await;
    // The failed takeover ends FAILED, or (its lease having run out while
    // it waited for Redis) a third job took over from it and finished.
    let state = await_preload_end(&pg, &event, Duration::from_secs(120)).await;
    eprintln!("fence chain: the job ended {state:?}");
    let rredis = env.redis();
    if state == EventState::Failed {
        assert_no_leftovers(&rredis, &event).await;
    }
    let again = second_env
        .preload_within(req, Duration::from_secs(120))
        .await
        .expect("the id can be preloaded again");
    assert_eq!(again.state, proto::EventState::Live as i32);
    assert_live_and_consistent(&pg, &rredis, &event, total).await;
    second.terminate().await;
}

/// The failing job's cleanup, step by step: abandoning reports a fence
/// another id holds and leaves it; naming that id drops it and its staging
/// list; naming any other id drops nothing (compare-and-delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoning_drops_a_stale_fence_only_when_named() {
    let _serial = SERIAL.lock().await; // other tests pause this Redis
    let redis = RedisStore::connect("redis://127.0.0.1:6379", 2).unwrap();
    let (event, dead) = staged_event(&redis, "stale").await;
    let failing = PreloadId::random(&mut rand::rng());
    let other = PreloadId::random(&mut rand::rng());
    let reply = redis.abandon_preload(&event, &failing, None).await.unwrap();
    assert_eq!(reply, FenceReply::Fenced(dead.clone()));
    let reply = redis
        .abandon_preload(&event, &failing, Some(&other))
        .await
        .unwrap();
    assert_eq!(reply, FenceReply::Fenced(dead.clone()), "another id: kept");
    let reply = redis
        .abandon_preload(&event, &failing, Some(&dead))
        .await
        .unwrap();
    assert_eq!(reply, FenceReply::Done);
    assert_no_leftovers(&redis, event.as_str()).await;
}
