//! `coupond preload`: start a preload on a running server and follow it to
//! its end with a progress bar.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tonic::Code;

use crate::client::Admin;
use crate::ops::{connect, get_event, status_text, time, ServerArgs};
use crate::proto::wire::timestamp;
use crate::proto::{self, DiscountPolicy, DiscountType, EventState, PreloadRequest};

/// What to preload: a JSON file, flags, or both (flags win).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PreloadArgs {
    /// JSON file with any of: event_id, name, total_count, policies
    /// ([{"type": "PERCENT", "value": 10, "weight": 1}]), starts_at,
    /// ends_at (RFC 3339), code_prefix, shards.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    #[arg(long = "event-id")]
    pub event_id: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Number of coupons.
    #[arg(long)]
    pub count: Option<u32>,
    /// A policy as TYPE:VALUE[:WEIGHT], e.g. PERCENT:10 or AMOUNT:5000:3
    /// (repeat for several; weight 1 unless given).
    #[arg(long = "policy")]
    pub policies: Vec<String>,
    /// Start of the window, RFC 3339 (default: now).
    #[arg(long = "starts-at")]
    pub starts_at: Option<String>,
    /// End of the window, RFC 3339 (default: a day after the start).
    #[arg(long = "ends-at")]
    pub ends_at: Option<String>,
    #[arg(long)]
    pub prefix: Option<String>,
    /// Shards to split the event over, on as many Redis masters (default
    /// 1; see the README's "Sharding one hot event").
    #[arg(long)]
    pub shards: Option<u32>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreloadFile {
    event_id: Option<String>,
    name: Option<String>,
    total_count: Option<u32>,
    policies: Option<Vec<FilePolicy>>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    code_prefix: Option<String>,
    shards: Option<u32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    #[serde(rename = "type")]
    kind: String,
    value: i64,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

fn kind_of(s: &str, what: &str) -> anyhow::Result<DiscountType> {
    match s.to_ascii_uppercase().as_str() {
        "PERCENT" => Ok(DiscountType::Percent),
        "AMOUNT" => Ok(DiscountType::Amount),
        _ => anyhow::bail!("{what}: discount type {s:?} is neither PERCENT nor AMOUNT"),
    }
}

/// `TYPE:VALUE[:WEIGHT]`.
fn parse_policy(s: &str) -> anyhow::Result<DiscountPolicy> {
    let what = format!("--policy {s}");
    let parts: Vec<&str> = s.split(':').collect();
    let (kind, value, weight) = match parts.as_slice() {
        [k, v] => (*k, *v, "1"),
        [k, v, w] => (*k, *v, *w),
        _ => anyhow::bail!("{what}: expected TYPE:VALUE or TYPE:VALUE:WEIGHT"),
    };
    Ok(DiscountPolicy {
        discount_type: kind_of(kind, &what)? as i32,
        discount_value: value
            .parse()
            .map_err(|_| anyhow::anyhow!("{what}: value {value:?} is not a whole number"))?,
        weight: weight
            .parse()
            .map_err(|_| anyhow::anyhow!("{what}: weight {weight:?} is not a whole number"))?,
    })
}

fn parse_time(s: &str, flag: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| anyhow::anyhow!("{flag} {s:?}: not an RFC 3339 time ({e})"))
}

/// Which parts of the window the command filled in itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Defaulted {
    pub starts_at: bool,
    pub ends_at: bool,
}

/// The request from the file and the flags (the server validates the
/// rest), and which window times were defaults.
pub fn preload_request(a: &PreloadArgs) -> anyhow::Result<(PreloadRequest, Defaulted)> {
    let file: PreloadFile = match &a.file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("--file {}: {e}", p.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--file {}: {e}", p.display()))?
        }
        None => PreloadFile::default(),
    };
    let policies = if a.policies.is_empty() {
        let from_file = file.policies.unwrap_or_default();
        from_file
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(DiscountPolicy {
                    discount_type: kind_of(&p.kind, &format!("policies[{i}].type"))? as i32,
                    discount_value: p.value,
                    weight: p.weight,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        a.policies
            .iter()
            .map(|p| parse_policy(p))
            .collect::<anyhow::Result<_>>()?
    };
    let mut defaulted = Defaulted::default();
    let starts_at = match (&a.starts_at, &file.starts_at) {
        (Some(s), _) => parse_time(s, "--starts-at")?,
        (None, Some(s)) => parse_time(s, "starts_at")?,
        (None, None) => {
            defaulted.starts_at = true;
            Utc::now()
        }
    };
    let ends_at = match (&a.ends_at, &file.ends_at) {
        (Some(s), _) => parse_time(s, "--ends-at")?,
        (None, Some(s)) => parse_time(s, "ends_at")?,
        (None, None) => {
            defaulted.ends_at = true;
            starts_at + chrono::Duration::days(1)
        }
    };
    let req = PreloadRequest {
        event_id: a.event_id.clone().or(file.event_id).unwrap_or_default(),
        name: a.name.clone().or(file.name).unwrap_or_default(),
        total_count: a.count.or(file.total_count).unwrap_or(0),
        policies,
        starts_at: Some(timestamp(starts_at)),
        ends_at: Some(timestamp(ends_at)),
        code_prefix: a.prefix.clone().or(file.code_prefix).unwrap_or_default(),
        shards: a.shards.or(file.shards).unwrap_or(0),
    };
    Ok((req, defaulted))
}

/// Running the very same command again (after a Ctrl-C or a lost
/// connection) must attach to the job or report the LIVE event: a window
/// time the command defaulted is the one the event was recorded with, when
/// it was; otherwise the defaults stand. Either way they are printed.
async fn settle_defaults(
    admin: &mut Admin,
    req: &mut PreloadRequest,
    defaulted: Defaulted,
) -> anyhow::Result<()> {
    if defaulted == Defaulted::default() {
        return Ok(());
    }
    let stored = admin
        .get_event(proto::GetEventRequest {
            event_id: req.event_id.clone(),
        })
        .await;
    let source = match stored {
        Ok(e) => {
            let e = e.into_inner();
            if defaulted.starts_at {
                req.starts_at = e.starts_at;
            }
            if defaulted.ends_at {
                req.ends_at = e.ends_at;
            }
            "as the event was recorded"
        }
        // Not found, or anything else: the Preload call says what is wrong.
        Err(_) => "defaults: now, and a day after the start",
    };
    eprintln!(
        "window {} .. {} ({source})",
        time(req.starts_at.as_ref()),
        time(req.ends_at.as_ref())
    );
    Ok(())
}

/// Starts (or attaches to) the preload and shows its progress until the
/// event is LIVE (prints its summary) or FAILED (an error with the reason).
pub async fn preload(server: &ServerArgs, args: &PreloadArgs) -> anyhow::Result<()> {
    let (mut req, defaulted) = preload_request(args)?;
    let mut admin = connect(server).await?;
    settle_defaults(&mut admin, &mut req, defaulted).await?;
    let event_id = req.event_id.clone();
    let mut bar = Progress::new(req.total_count);
    loop {
        // Short calls: each starts or attaches to the job; in between the
        // bar follows GetEvent, so a long preload never looks hung.
        let mut call = tonic::Request::new(req.clone());
        call.set_timeout(Duration::from_secs(2));
        match admin.preload(call).await {
            Ok(r) => {
                bar.finish();
                return print_summary(&mut admin, &event_id, &r.into_inner()).await;
            }
            Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {}
            Err(s) => {
                bar.finish();
                anyhow::bail!("preload {event_id}: {}", status_text(&s));
            }
        }
        let e = get_event(&mut admin, &event_id).await?;
        bar.show(e.preloaded_count);
        if e.state == EventState::Failed as i32 {
            bar.finish();
            anyhow::bail!("preload {event_id} FAILED: {}", e.failure_reason);
        }
    }
}

async fn print_summary(
    admin: &mut Admin,
    id: &str,
    r: &proto::PreloadResponse,
) -> anyhow::Result<()> {
    let e = get_event(admin, id).await?;
    println!("event {id} is LIVE (preload {})", r.preload_id);
    println!("  name        {}", e.name);
    println!("  coupons     {}", e.total_count);
    for p in &e.policies {
        let d = p.policy.as_ref();
        let kind = d
            .and_then(|d| DiscountType::try_from(d.discount_type).ok())
            .map_or("?".into(), |k| {
                k.as_str_name()
                    .trim_start_matches("DISCOUNT_TYPE_")
                    .to_owned()
            });
        println!(
            "  policy      {kind} {} (weight {}): {} coupons",
            d.map_or(0, |d| d.discount_value),
            d.map_or(0, |d| d.weight),
            p.coupon_count
        );
    }
    println!(
        "  window      {} .. {}",
        time(e.starts_at.as_ref()),
        time(e.ends_at.as_ref())
    );
    println!(
        "  took        {} ms (generate {} ms, database {} ms, redis {} ms)",
        r.total_ms, r.generate_ms, r.database_ms, r.redis_ms
    );
    Ok(())
}

/// A progress bar on stderr (a line every few seconds when it is not a
/// terminal): coupons written, rate, ETA.
struct Progress {
    total: u32,
    started: Instant,
    last_line: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn new(total: u32) -> Self {
        Self {
            total,
            started: Instant::now(),
            last_line: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, written: u32) {
        if !self.tty
            && self
                .last_line
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        self.last_line = Some(Instant::now());
        let line = progress_line(written, self.total, self.started.elapsed());
        let mut err = std::io::stderr();
        let _ = if self.tty {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.tty && self.last_line.is_some() {
            eprintln!();
        }
    }
}

/// `[#####---------------]  25%  250,000 / 1,000,000  120,000/s  ETA 6s`
pub fn progress_line(written: u32, total: u32, elapsed: Duration) -> String {
    const WIDTH: usize = 30;
    let frac = if total == 0 {
        0.0
    } else {
        f64::from(written) / f64::from(total)
    };
    let filled = ((frac * WIDTH as f64) as usize).min(WIDTH);
    let rate = f64::from(written) / elapsed.as_secs_f64().max(0.001);
    let eta = if written == 0 || rate < 1.0 {
        "ETA ?".to_owned()
    } else {
        format!(
            "ETA {}s",
            (f64::from(total - written.min(total)) / rate).ceil()
        )
    };
    format!(
        "[{}{}] {:>3}%  {} / {}  {}/s  {eta}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        (frac * 100.0) as u32,
        thousands(u64::from(written)),
        thousands(u64::from(total)),
        thousands(rate as u64),
    )
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::to_datetime;

    #[test]
    fn policies_parse_from_flags_and_name_the_flag_when_wrong() {
        let p = parse_policy("amount:5000:3").unwrap();
        assert_eq!(
            (p.discount_type, p.discount_value, p.weight),
            (DiscountType::Amount as i32, 5000, 3)
        );
        assert_eq!(parse_policy("PERCENT:10").unwrap().weight, 1);
        for bad in [
            "PERCENT",
            "FREE:10",
            "PERCENT:ten",
            "PERCENT:10:x",
            "A:1:2:3",
        ] {
            let e = parse_policy(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--policy {bad}")), "{e}");
        }
    }

    #[test]
    fn flags_override_the_file_and_the_window_defaults_to_a_day() {
        let dir = std::env::temp_dir().join(format!("coupond-op-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("drop.json");
        std::fs::write(
            &file,
            r#"{"event_id": "d1", "name": "Drop", "total_count": 10,
                "policies": [{"type": "PERCENT", "value": 10}],
                "starts_at": "2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let args = PreloadArgs {
            file: Some(file.clone()),
            count: Some(20),
            ..Default::default()
        };
        let (r, defaulted) = preload_request(&args).unwrap();
        assert_eq!(
            defaulted,
            Defaulted {
                starts_at: false,
                ends_at: true
            }
        );
        assert_eq!((r.event_id.as_str(), r.total_count), ("d1", 20));
        assert_eq!(r.policies.len(), 1);
        let starts = to_datetime(r.starts_at.as_ref().unwrap()).unwrap();
        let ends = to_datetime(r.ends_at.as_ref().unwrap()).unwrap();
        assert_eq!(ends - starts, chrono::Duration::days(1));
        std::fs::write(&file, r#"{"event": "typo"}"#).unwrap();
        let e = preload_request(&args).unwrap_err().to_string();
        assert!(e.contains("unknown field `event`"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_progress_line_shows_share_rate_and_eta() {
        let l = progress_line(250_000, 1_000_000, Duration::from_secs(2));
        assert!(
            l.starts_with("[#######-----------------------]  25%"),
            "{l}"
        );
        assert!(l.contains("250,000 / 1,000,000"), "{l}");
        assert!(l.contains("125,000/s") && l.ends_with("ETA 6s"), "{l}");
        assert!(progress_line(0, 10, Duration::from_secs(1)).ends_with("ETA ?"));
    }
}
