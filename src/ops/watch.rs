//! `coupond watch --event E`: a live view of a drop in the terminal,
//! refreshed each second until the event ends. Two kinds of figures, and
//! the screen says which is which: the event's own (issued per second,
//! remaining, pending, finalized, conflicts), from GetEvent, which count
//! every server's issuances; and, given one server's metrics endpoint, that
//! server's p99 Issue latency and errors over the last `WINDOW`, all its
//! events together (the metrics carry no event label).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ops::{connect, ServerArgs};
use crate::proto;
use crate::proto::wire::to_datetime;

#[derive(clap::Args)]
pub struct WatchArgs {
    /// The event to watch.
    #[arg(long)]
    pub event: String,
    /// The server's metrics endpoint, for p99 latency and errors, e.g.
    /// http://127.0.0.1:9464/metrics.
    #[arg(long, env = "COUPOND_WATCH_METRICS")]
    pub metrics: Option<String>,
    /// Stop after this many screens (default: when the event has ended).
    #[arg(long)]
    pub frames: Option<u64>,
}

/// How far back the server's p99 and errors look.
pub const WINDOW: Duration = Duration::from_secs(10);

/// What one scrape of the metrics endpoint says, cumulative since the
/// server started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scraped {
    /// coupond_issue_duration_seconds buckets: (le, answers), all RPCs.
    pub buckets: Vec<(f64, f64)>,
    /// Answers that were failures: unavailable, unknown, invalid.
    pub errors: f64,
}

/// What the metrics endpoint adds to a screen: the server's figures over
/// the last `WINDOW` (or since the first scrape, until that long passed;
/// nothing at the first scrape).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Served {
    /// p99 of the answers in the window (s).
    pub p99_s: Option<f64>,
    /// Failed answers in the window.
    pub errors: f64,
}

/// Scrapes of the last `WINDOW`, oldest first.
#[derive(Default)]
struct Recent(std::collections::VecDeque<(Instant, Scraped)>);

impl Recent {
    /// Adds a scrape and returns the figures since the oldest one kept
    /// (`None` for the first: there is no window yet).
    fn add(&mut self, at: Instant, now: Scraped) -> Option<Served> {
        while self.0.len() > 1 && at.duration_since(self.0[1].0) >= WINDOW {
            self.0.pop_front();
        }
        let base = self.0.front().map(|(_, s)| s.clone());
        self.0.push_back((at, now.clone()));
        base.map(|b| window(&b, &now))
    }
}

/// The figures between two scrapes. Pure.
pub fn window(before: &Scraped, now: &Scraped) -> Served {
    let buckets: Vec<(f64, f64)> = now
        .buckets
        .iter()
        .map(|(le, n)| {
            let was = before
                .buckets
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |b| b.1);
            (*le, (n - was).max(0.0))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    let p99_s = (total > 0.0)
        .then(|| {
            buckets
                .iter()
                .find(|(_, n)| *n >= total * 0.99)
                .map(|b| b.0)
        })
        .flatten();
    Served {
        p99_s,
        errors: (now.errors - before.errors).max(0.0),
    }
}

pub async fn watch(server: &ServerArgs, args: &WatchArgs) -> anyhow::Result<()> {
    let mut admin = connect(server).await?;
    let tty = std::io::stdout().is_terminal();
    let mut last: Option<(Instant, u32)> = None;
    let mut recent = Recent::default();
    let mut frame = 0u64;
    loop {
        let e = admin
            .get_event(proto::GetEventRequest {
                event_id: args.event.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("GetEvent {}: {}", args.event, s.message()))?
            .into_inner();
        let now = Instant::now();
        let rate = last.map(|(t, n)| {
            f64::from(e.issued_count.saturating_sub(n)) / (now - t).as_secs_f64().max(1e-3)
        });
        last = Some((now, e.issued_count));
        let served = match &args.metrics {
            Some(url) => scrape(url).await.ok().and_then(|s| recent.add(now, s)),
            None => None,
        };
        let screen = render(&e, rate, served);
        let mut out = std::io::stdout().lock();
        if tty {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        writeln!(out, "{screen}")?;
        out.flush()?;
        frame += 1;
        let ended = e
            .ends_at
            .as_ref()
            .and_then(to_datetime)
            .is_some_and(|t| t <= Utc::now());
        if args.frames.is_some_and(|n| frame >= n) || ended {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One screen. Pure.
pub fn render(e: &proto::Event, issued_per_s: Option<f64>, served: Option<Served>) -> String {
    let pending = e.issued_count.saturating_sub(e.finalized_count);
    let rate = issued_per_s.map_or("-".into(), |r| format!("{r:.0}"));
    let (p99, errors) = match served {
        Some(s) => (
            s.p99_s
                .map_or("-".into(), |p| format!("{:.1} ms", p * 1000.0)),
            format!("{:.0}", s.errors),
        ),
        None => ("- (no --metrics)".into(), "-".into()),
    };
    let window = WINDOW.as_secs();
    let state = crate::ops::events::shown_state(e, Utc::now());
    format!(
        "coupond watch  event {}  {state}\n\
         this event, every server:\n\
         issued/s   {rate:>10}\n\
         issued     {:>10} of {}\n\
         remaining  {:>10}\n\
         pending    {pending:>10}\n\
         finalized  {:>10}\n\
         conflicts  {:>10}\n\
         the --metrics server, every event, last {window} s:\n\
         p99        {p99:>10}\n\
         errors     {errors:>10}",
        e.event_id,
        e.issued_count,
        e.total_count,
        e.remaining_count,
        e.finalized_count,
        e.conflicted_count
    )
}

/// Reads the server's metrics (plain HTTP GET).
async fn scrape(url: &str) -> anyhow::Result<Scraped> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("--metrics must be an http:// URL"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(host))
        .await??;
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut body)).await??;
    Ok(parse_metrics(&body))
}

/// Issue latency buckets and error answers from Prometheus text. Pure.
pub fn parse_metrics(text: &str) -> Scraped {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut errors = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if name.starts_with("coupond_issue_duration_seconds_bucket") {
            let le = label(name, "le").and_then(|l| match l {
                "+Inf" => Some(f64::INFINITY),
                l => l.parse().ok(),
            });
            if let Some(le) = le {
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, n)) => *n += v,
                    None => buckets.push((le, v)),
                }
            }
        } else if name.starts_with("coupond_issue_outcomes_total")
            && matches!(
                label(name, "result"),
                Some("unavailable" | "unknown" | "invalid")
            )
        {
            errors += v;
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Scraped { buckets, errors }
}

fn label<'a>(name: &'a str, key: &str) -> Option<&'a str> {
    let start = name.find(&format!("{key}=\""))? + key.len() + 2;
    let end = name[start..].find('"')? + start;
    Some(&name[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_and_errors_come_from_the_prometheus_text() {
        let text = "\
# TYPE coupond_issue_duration_seconds histogram
coupond_issue_duration_seconds_bucket{rpc=\"issue\",le=\"0.005\"} 90
coupond_issue_duration_seconds_bucket{rpc=\"issue\",le=\"0.01\"} 99
coupond_issue_duration_seconds_bucket{rpc=\"issue\",le=\"0.025\"} 100
coupond_issue_duration_seconds_bucket{rpc=\"issue\",le=\"+Inf\"} 100
coupond_issue_outcomes_total{rpc=\"issue\",result=\"issued\"} 97
coupond_issue_outcomes_total{rpc=\"issue\",result=\"unavailable\"} 2
coupond_issue_outcomes_total{rpc=\"issue_stream\",result=\"unknown\"} 1
";
        let s = window(&Scraped::default(), &parse_metrics(text));
        assert_eq!(s.p99_s, Some(0.01));
        assert_eq!(s.errors, 3.0);
        assert_eq!(window(&Scraped::default(), &parse_metrics("")).p99_s, None);
    }

    #[test]
    fn p99_and_errors_count_only_the_answers_of_the_window() {
        let at = |fast: f64, slow: f64, errors: f64| Scraped {
            buckets: vec![
                (0.005, fast),
                (1.0, fast + slow),
                (f64::INFINITY, fast + slow),
            ],
            errors,
        };
        // A slow start long ago, fast answers since.
        let s = window(&at(0.0, 100.0, 5.0), &at(1000.0, 100.0, 6.0));
        assert_eq!((s.p99_s, s.errors), (Some(0.005), 1.0));
        let mut recent = Recent::default();
        let t0 = Instant::now();
        assert_eq!(recent.add(t0, at(0.0, 100.0, 5.0)), None, "no window yet");
        recent.add(t0 + WINDOW / 2, at(500.0, 100.0, 5.0));
        let s = recent.add(t0 + WINDOW * 2, at(1000.0, 100.0, 5.0)).unwrap();
        assert_eq!(
            s.p99_s,
            Some(0.005),
            "the slow start fell out of the window"
        );
    }

    #[test]
    fn a_screen_shows_the_counts_and_the_rate() {
        let e = proto::Event {
            event_id: "drop-1".into(),
            total_count: 1000,
            issued_count: 600,
            finalized_count: 550,
            remaining_count: 400,
            state: proto::EventState::Live as i32,
            ..Default::default()
        };
        let s = render(
            &e,
            Some(120.4),
            Some(Served {
                p99_s: Some(0.0123),
                errors: 2.0,
            }),
        );
        for want in [
            "drop-1  LIVE",
            "this event, every server:",
            "every event, last 10 s:",
            "issued/s          120",
            "600 of 1000",
            "pending            50",
            "12.3 ms",
            "errors              2",
        ] {
            assert!(s.contains(want), "{want:?} in\n{s}");
        }
    }
}
