//! Redis stumbling under issue load: writes stalled past the client's
//! response timeout (and past the server's retry budget), and every
//! connection killed again and again. The clients never retry a user, and
//! afterwards every user is looked up: a user told UNAVAILABLE holds no
//! coupon, every user told ISSUED is finalized with that code, and a user
//! told the outcome is unknown (DEADLINE_EXCEEDED) may hold one, which is
//! then finalized too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::{self, IssueResult};
use tonic::Code;

use crate::support::{redis_cmd, Env, OwnRedis, RestoreStack, SERIAL};

const COUPONS: u32 = 3000;
const USERS: u64 = 4000;
const CONCURRENCY: usize = 24;

/// What one user was told, once.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    Issued(String),
    SoldOut,
    /// UNAVAILABLE: nothing was issued (also while Redis had lost the
    /// event, before it was rebuilt: never EVENT_NOT_FOUND).
    Unavailable,
    Unknown,
}

/// Asks `users` users named `<prefix>-<n>` once each, `CONCURRENCY` at a
/// time, while `fault` runs beside the load (given how many were answered,
/// to strike mid-load); returns what each was told.
async fn ask_once_during<F: std::future::Future<Output = ()>>(
    env: &Env,
    event: &str,
    (prefix, users): (&str, u64),
    fault: impl FnOnce(Answered) -> F,
) -> HashMap<String, Told> {
    let told: Arc<Mutex<HashMap<String, Told>>> = Arc::new(Mutex::new(HashMap::new()));
    let answered = Answered(told.clone());
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut client = CouponIssuerClient::new(env.channel().await);
        let (told, next, event) = (told.clone(), next.clone(), event.to_owned());
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= users {
                    return;
                }
                let user = format!("{prefix}-{n}");
                let r = client
                    .issue(proto::IssueRequest {
                        event_id: event.clone(),
                        user_id: user.clone(),
                        request_id: format!("r-{user}"),
                    })
                    .await;
                let t = match r {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        match IssueResult::try_from(resp.result).unwrap() {
                            IssueResult::Issued => Told::Issued(resp.coupon.unwrap().code),
                            IssueResult::SoldOut => Told::SoldOut,
                            other => panic!("{user}: unexpected {other:?}"),
                        }
                    }
                    Err(s) if s.code() == Code::Unavailable => Told::Unavailable,
                    Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                        Told::Unknown
                    }
                    Err(s) => panic!("{user}: unexpected status {s:?}"),
                };
                told.lock().unwrap().insert(user, t);
            }
        }));
    }
    fault(answered).await;
    for t in tasks {
        t.await.expect("load task");
    }
    let told = told.lock().unwrap().clone();
    told
}

/// How many users the load has answered so far.
struct Answered(Arc<Mutex<HashMap<String, Told>>>);

impl Answered {
    /// Waits until at least `n` users were answered.
    async fn at_least(&self, n: usize) {
        let seen = crate::common::eventually(Duration::from_secs(60), || {
            let k = self.0.lock().unwrap().len();
            async move { k >= n }
        })
        .await;
        assert!(seen, "the load stalled before {n} answers");
    }
}

/// Looks every user up and checks what they hold against what they were
/// told; then PostgreSQL must hold exactly the coupons users hold.
async fn check_every_user(env: &Env, event: &str, told: &HashMap<String, Told>, fault: &str) {
    let mut client = CouponIssuerClient::new(env.channel().await);
    let mut holds: HashMap<String, String> = HashMap::new();
    for (user, t) in told {
        let r = client
            .get_issuance(proto::GetIssuanceRequest {
                event_id: event.into(),
                user_id: user.clone(),
            })
            .await;
        let held = match r {
            Ok(r) => Some(r.into_inner().coupon.unwrap().code),
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => panic!("looking up {user}: {s:?}"),
        };
        match (t, &held) {
            (Told::Issued(code), Some(h)) => assert_eq!(code, h, "{user} holds what it was told"),
            (Told::Issued(_), None) => panic!("{user} was told ISSUED and holds nothing"),
            (Told::Unavailable | Told::SoldOut, Some(h)) => {
                panic!("{user} was told {t:?} but holds {h}")
            }
            _ => {}
        }
        if let Some(h) = held {
            holds.insert(user.clone(), h);
        }
    }
    let count = |f: fn(&Told) -> bool| told.values().filter(|t| f(t)).count();
    let issued = count(|t| matches!(t, Told::Issued(_)));
    let unknown = count(|t| *t == Told::Unknown);
    let unknown_held = told
        .iter()
        .filter(|(u, t)| **t == Told::Unknown && holds.contains_key(*u))
        .count();
    eprintln!(
        "{fault}: told ISSUED {issued}, UNAVAILABLE {}, unknown {unknown} ({unknown_held} of them hold a coupon), SOLD_OUT {}; {} hold coupons, all finalized, lost 0",
        count(|t| *t == Told::Unavailable),
        count(|t| *t == Told::SoldOut),
        holds.len()
    );
    assert!(holds.len() <= COUPONS as usize, "no oversell");
    let codes: HashSet<&String> = holds.values().collect();
    assert_eq!(codes.len(), holds.len(), "no code held twice");
    env.assert_exactly_recorded(event, &holds).await;
    assert_eq!(env.dead_letters(), 0, "nothing dead-lettered");
    let (exit, report) = env.reconcile(event, &[]);
    assert_eq!(exit, 0, "reconcile after {fault}: {report}");
}

/// A server under a once-only load of every user while `fault` runs; then
/// every user is looked up.
async fn every_answer_true_through<F: std::future::Future<Output = ()>>(
    fault_name: &str,
    fault: impl FnOnce(Answered) -> F,
) {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    let mut server = env.serve(&[]).await;
    let event = env.preload(COUPONS).await;
    let told = ask_once_during(&env, &event, ("user", USERS), fault).await;
    check_every_user(&env, &event, &told, fault_name).await;
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stalled_past_the_timeouts_mid_load_tells_nobody_a_wrong_answer() {
    every_answer_true_through("redis stalled 4 s", |answered| async move {
        answered.at_least(300).await;
        // 4 s: past the 500 ms response timeout and the 3 s retry budget.
        redis_cmd(&["CLIENT", "PAUSE", "4000", "WRITE"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_connections_killed_mid_load_tell_nobody_a_wrong_answer() {
    every_answer_true_through("redis connections killed", |answered| async move {
        answered.at_least(300).await;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            redis_cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_crashed_and_restarted_with_appendfsync_always_mid_load_tells_nobody_a_wrong_answer()
{
    let _serial = SERIAL.lock().await;
    let mut redis = OwnRedis::start(true).await;
    let mut env = Env::new().await;
    env.settings.redis.url = redis.url();
    let mut server = env.serve(&[]).await;
    let event = env.preload(COUPONS).await;
    let redis = &mut redis; // the fault borrows it: dropping it would stop it
    let told = ask_once_during(&env, &event, ("user", USERS), |answered| async move {
        answered.at_least(1000).await;
        redis.kill9();
        // Down past the server's 3 s retry budget: calls then arriving
        // are told UNAVAILABLE, calls in flight may be told the outcome is
        // unknown.
        tokio::time::sleep(Duration::from_secs(4)).await;
        redis.restart().await;
    })
    .await;
    check_every_user(&env, &event, &told, "redis crashed (appendfsync always)").await;
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lost_while_the_finalizer_lags_is_rebuilt_only_when_forced_and_drops_nobody() {
    let _serial = SERIAL.lock().await;
    let mut redis = OwnRedis::start(false).await;
    let mut env = Env::new().await;
    env.settings.redis.url = redis.url();
    // No finalizer: everything issued stays in its backlog.
    let mut server = env.serve(&["--no-consumer"]).await;
    let event = env.preload(COUPONS).await;
    let mut told = ask_once_during(&env, &event, ("early", USERS / 2), |_| async {}).await;

    // Redis crashes without persistence: the event is gone from it.
    redis.kill9();
    redis.restart().await;
    let rebuild = |_| async {
        let (exit, out) = env.reconcile(&event, &["--rebuild-redis"]);
        assert_ne!(exit, 0, "refused while the finalizer lags: {out}");
        assert!(out.contains("unconsumed messages in kafka"), "{out}");
        let (exit, out) = env.reconcile(&event, &["--rebuild-redis", "--force"]);
        assert_eq!(exit, 0, "{out}");
        assert!(
            !out.contains("conflicted:") && !out.contains("dropped:"),
            "{out}"
        );
        eprintln!("forced rebuild: {}", out.lines().next().unwrap_or_default());
    };
    told.extend(ask_once_during(&env, &event, ("late", USERS), rebuild).await);
    let _finalizer = env.consume();
    check_every_user(&env, &event, &told, "redis lost, forced rebuild").await;
    server.terminate().await;
}
