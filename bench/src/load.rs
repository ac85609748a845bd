//! The load generator over the public gRPC API. It preloads
//! an event (or uses a given one), drives Issue or IssueStream with distinct
//! user ids, reports throughput, latency percentiles and result counts, and
//! then checks the invariants and how long finalization took to catch up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use coupond::client::BearerToken;
use coupond::proto;
use coupond::proto::coupon_admin_client::CouponAdminClient;
use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::wire::timestamp;

use crate::report::Report;
use crate::run::{BenchArgs, Event, Finalization, Measured, Mode, Tally};

type Authorised = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;
type IssuerClient = CouponIssuerClient<Authorised>;
type AdminClient = CouponAdminClient<Authorised>;

async fn channels(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        out.push(
            Endpoint::from_shared(addr.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok(out)
}

/// Runs one benchmark and returns its report. `db`, when given, is the
/// server's database URL: the report then carries the per-issuance
/// ISSUED-to-PostgreSQL delays.
pub async fn run(args: BenchArgs, db: Option<&str>) -> anyhow::Result<Report> {
    let chans = channels(&args.addr, args.connections).await?;
    let mut admin = CouponAdminClient::with_interceptor(
        chans[0].clone(),
        BearerToken::new(args.admin_token.as_deref())?,
    );
    let run_id = format!("{:x}", rand::random::<u32>());
    let event = match &args.event {
        Some(e) => Event {
            id: e.clone(),
            preload_ms: None,
        },
        None => preload(&mut admin, &args, &run_id).await?,
    };
    let total_coupons = get_event(&mut admin, &event.id).await?.total_count;
    let (tally, elapsed) = drive(&args, &chans, &event.id, &run_id).await?;
    let mut finalization = Finalization::default();
    if args.mode != Mode::Preload && !args.no_finalize_wait {
        finalization = await_finalization(&mut admin, &event.id).await?;
    }
    if let Some(db) = db {
        match crate::db::finalize_delays(db, &event.id).await {
            Ok(d) => finalization.delays = d,
            Err(e) => eprintln!("reading finalization delays failed: {e:#}"),
        }
    }
    Ok(Report::new(
        &args,
        &event,
        total_coupons,
        Measured { tally, elapsed },
        finalization,
    ))
}

/// Preloads a fresh event of `args.coupons` over three policies, open now.
async fn preload(admin: &mut AdminClient, args: &BenchArgs, run_id: &str) -> anyhow::Result<Event> {
    let id = format!("bench-{run_id}");
    let now = chrono::Utc::now();
    let req = proto::PreloadRequest {
        event_id: id.clone(),
        name: "benchmark".into(),
        total_count: args.coupons,
        policies: vec![
            policy(proto::DiscountType::Percent, 10, 5),
            policy(proto::DiscountType::Amount, 3000, 3),
            policy(proto::DiscountType::Percent, 50, 2),
        ],
        starts_at: Some(timestamp(now - chrono::Duration::minutes(1))),
        ends_at: Some(timestamp(now + chrono::Duration::hours(1))),
        code_prefix: String::new(),
        shards: args.shards,
    };
    let t = Instant::now();
    // A preload longer than the server's request cap answers
    // DEADLINE_EXCEEDED while its job goes on: call again to wait.
    let r = loop {
        match admin.preload(req.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => continue,
            Err(s) => return Err(s.into()),
        }
    };
    let ms = t.elapsed().as_millis() as u64;
    eprintln!(
        "preloaded {} coupons in {ms} ms (server: generate {} ms, database {} ms, redis {} ms, total {} ms)",
        args.coupons, r.generate_ms, r.database_ms, r.redis_ms, r.total_ms
    );
    Ok(Event {
        id,
        preload_ms: Some(ms),
    })
}

async fn get_event(admin: &mut AdminClient, event: &str) -> anyhow::Result<proto::Event> {
    Ok(admin
        .get_event(proto::GetEventRequest {
            event_id: event.to_owned(),
        })
        .await?
        .into_inner())
}

/// Runs the load's clients to the end; what they saw and how long it took.
async fn drive(
    args: &BenchArgs,
    chans: &[Channel],
    event: &str,
    run_id: &str,
) -> anyhow::Result<(Tally, Duration)> {
    let issuer_auth = BearerToken::new(args.issuer_token.as_deref())?;
    if args.rate > 0 && args.mode != Mode::Unary {
        anyhow::bail!("--rate paces unary calls only");
    }
    let tally = Arc::new(Mutex::new(Tally::new()));
    let started = Instant::now();
    let work = Arc::new(Work {
        next: AtomicU64::new(0),
        requests: args.requests,
        deadline: started + Duration::from_secs(args.duration_s),
        event: event.to_owned(),
        run_id: run_id.to_owned(),
        pace: (args.rate > 0).then(|| (started, Duration::from_secs(1) / args.rate)),
    });
    if args.mode != Mode::Preload {
        let mut tasks = Vec::with_capacity(args.concurrency);
        for i in 0..args.concurrency.max(1) {
            let client = CouponIssuerClient::with_interceptor(
                chans[i % chans.len()].clone(),
                issuer_auth.clone(),
            );
            let (tally, work) = (tally.clone(), work.clone());
            tasks.push(tokio::spawn(match args.mode {
                Mode::Unary => Box::pin(unary_client(client, tally, work))
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
                _ => Box::pin(stream_client(client, tally, work)),
            }));
        }
        for t in tasks {
            t.await?;
        }
    }
    let elapsed = started.elapsed();
    let tally = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("tally still shared"))?
        .into_inner();
    Ok((tally, elapsed))
}

/// Polls GetEvent until PostgreSQL counts every issued coupon (at most 120 s).
async fn await_finalization(admin: &mut AdminClient, event: &str) -> anyhow::Result<Finalization> {
    let t = Instant::now();
    loop {
        let e = get_event(admin, event).await?;
        if e.finalized_count >= e.issued_count || t.elapsed() > Duration::from_secs(120) {
            return Ok(Finalization {
                finalized: e.finalized_count,
                catch_up_ms: Some(t.elapsed().as_millis() as u64),
                delays: None,
            });
        }
        // Counting a big event's finalized rows costs PostgreSQL tens of
        // milliseconds: polling faster would slow the finalizer it
        // measures. The per-issuance delays are exact anyway.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn policy(kind: proto::DiscountType, value: i64, weight: u32) -> proto::DiscountPolicy {
    proto::DiscountPolicy {
        discount_type: kind as i32,
        discount_value: value,
        weight,
    }
}

/// The requests of one run, handed out to every client.
struct Work {
    next: AtomicU64,
    requests: u64,
    deadline: Instant,
    event: String,
    run_id: String,
    /// An open loop: the start and the interval between requests.
    pace: Option<(Instant, Duration)>,
}

impl Work {
    /// The next request number, until the count or the deadline is reached.
    fn take(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.requests).then_some(n)
    }

    /// When request `n` is due in an open loop.
    fn due(&self, n: u64) -> Option<Instant> {
        self.pace
            .map(|(start, every)| start + every.saturating_mul(n as u32))
    }

    /// Request `n`: a distinct user per request, the number as request id.
    fn user(&self, n: &str) -> String {
        format!("u{}-{n}", self.run_id)
    }

    fn request(&self, n: u64) -> proto::IssueRequest {
        proto::IssueRequest {
            event_id: self.event.clone(),
            user_id: self.user(&n.to_string()),
            request_id: n.to_string(),
        }
    }
}

async fn unary_client(mut client: IssuerClient, tally: Arc<Mutex<Tally>>, work: Arc<Work>) {
    while let Some(n) = work.take() {
        let req = work.request(n);
        let user = req.user_id.clone();
        if let Some(due) = work.due(n) {
            tokio::time::sleep_until(due.into()).await;
        }
        // From the send, not the due time: Tokio's timer wakes up to a
        // millisecond late, which is the generator's, not the server's.
        let t = Instant::now();
        let r = client.issue(req).await.map(|r| r.into_inner());
        tally.lock().await.record(user, t.elapsed(), r);
    }
}

/// One stream: a producer task feeds requests as fast as the server's flow
/// control takes them; latency is measured per item from send to answer.
async fn stream_client(mut client: IssuerClient, tally: Arc<Mutex<Tally>>, work: Arc<Work>) {
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::IssueRequest>(1024);
    let feeder = {
        let (sent, work) = (sent.clone(), work.clone());
        tokio::spawn(async move {
            while let Some(n) = work.take() {
                sent.lock()
                    .expect("sent map")
                    .insert(n.to_string(), Instant::now());
                if tx.send(work.request(n)).await.is_err() {
                    break;
                }
            }
        })
    };
    let resp = client
        .issue_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let mut inbound = match resp {
        Ok(r) => r.into_inner(),
        Err(s) => {
            *tally
                .lock()
                .await
                .errors
                .entry(format!("{:?}", s.code()))
                .or_default() += 1;
            return;
        }
    };
    let mut local = Vec::with_capacity(1024);
    while let Some(item) = inbound.next().await {
        match item {
            Ok(r) => {
                let t0 = sent.lock().expect("sent map").remove(&r.request_id);
                let user = work.user(&r.request_id);
                local.push((user, t0.map(|t| t.elapsed()).unwrap_or_default(), Ok(r)));
            }
            Err(s) => {
                local.push((String::new(), Duration::ZERO, Err(s)));
                break;
            }
        }
        if local.len() >= 1024 {
            let mut t = tally.lock().await;
            for (u, d, r) in local.drain(..) {
                t.record(u, d, r);
            }
        }
    }
    let mut t = tally.lock().await;
    for (u, d, r) in local.drain(..) {
        t.record(u, d, r);
    }
    let _ = feeder.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(pace: Option<(Instant, Duration)>) -> Work {
        Work {
            next: AtomicU64::new(0),
            requests: 10,
            deadline: Instant::now() + Duration::from_secs(60),
            event: "e".into(),
            run_id: "r".into(),
            pace,
        }
    }

    #[test]
    fn an_open_loop_spaces_the_requests_by_the_rate_and_a_closed_one_never_waits() {
        let start = Instant::now();
        let every = Duration::from_secs(1) / 4000;
        let open = work(Some((start, every)));
        assert_eq!(open.due(0), Some(start));
        assert_eq!(open.due(4000), Some(start + Duration::from_secs(1)));
        assert_eq!(open.due(6000), Some(start + Duration::from_millis(1500)));
        assert_eq!(work(None).due(7), None);
    }
}
