//! `coupond events`: a table of a running server's events, and the
//! operators' controls of one (`pause`, `resume`, `close`, `extend`).

use chrono::{DateTime, Utc};

use crate::ops::{connect, status_text, time, ServerArgs};
use crate::proto::wire::{timestamp, to_datetime};
use crate::proto::{self, EventState};

fn state_name(s: i32) -> &'static str {
    match EventState::try_from(s) {
        Ok(EventState::Preparing) => "PREPARING",
        Ok(EventState::Live) => "LIVE",
        Ok(EventState::Failed) => "FAILED",
        _ => "?",
    }
}

/// Prints every event as a table, paging through ListEvents.
pub async fn events(server: &ServerArgs) -> anyhow::Result<()> {
    let mut admin = connect(server).await?;
    let mut rows = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_events(proto::ListEventsRequest {
                page_size: 500,
                page_token: token,
            })
            .await
            .map_err(|s| anyhow::anyhow!("ListEvents: {}", status_text(&s)))?
            .into_inner();
        rows.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    print!("{}", events_table(&rows));
    Ok(())
}

/// An operator's control of a live event (`coupond events <control>`).
#[derive(clap::Subcommand)]
pub enum EventControl {
    /// Pause: Issue answers PAUSED and issues nothing until `resume`.
    Pause(ControlArgs),
    /// Resume a paused event.
    Resume(ControlArgs),
    /// End the event's window now: Issue answers ENDED.
    Close(ControlArgs),
    /// Move the event's end (RFC 3339, e.g. 2026-11-25T18:00:00Z).
    Extend {
        #[command(flatten)]
        args: ControlArgs,
        #[arg(long)]
        ends_at: String,
    },
}

#[derive(clap::Args)]
pub struct ControlArgs {
    /// The event.
    #[arg(long)]
    pub event: String,
    /// Why, recorded with the control.
    #[arg(long)]
    pub reason: String,
}

/// Applies `control` and prints the event it leaves.
pub async fn control(server: &ServerArgs, control: &EventControl) -> anyhow::Result<()> {
    let mut admin = connect(server).await?;
    let fail = |s: tonic::Status| anyhow::anyhow!("{}", status_text(&s));
    let event = match control {
        EventControl::Pause(a) => admin
            .pause_event(proto::PauseEventRequest {
                event_id: a.event.clone(),
                reason: a.reason.clone(),
            })
            .await
            .map(|r| r.into_inner().event),
        EventControl::Resume(a) => admin
            .resume_event(proto::ResumeEventRequest {
                event_id: a.event.clone(),
                reason: a.reason.clone(),
            })
            .await
            .map(|r| r.into_inner().event),
        EventControl::Close(a) => admin
            .close_event(proto::CloseEventRequest {
                event_id: a.event.clone(),
                reason: a.reason.clone(),
            })
            .await
            .map(|r| r.into_inner().event),
        EventControl::Extend { args, ends_at } => {
            let t = chrono::DateTime::parse_from_rfc3339(ends_at).map_err(|e| {
                anyhow::anyhow!("--ends-at {ends_at:?}: {e} (RFC 3339, e.g. 2026-11-25T18:00:00Z)")
            })?;
            admin
                .extend_event(proto::ExtendEventRequest {
                    event_id: args.event.clone(),
                    ends_at: Some(timestamp(t.with_timezone(&chrono::Utc))),
                    reason: args.reason.clone(),
                })
                .await
                .map(|r| r.into_inner().event)
        }
    }
    .map_err(fail)?;
    print!("{}", events_table(&event.into_iter().collect::<Vec<_>>()));
    Ok(())
}

/// What the STATE column says: the preload state, and for a live event
/// whether its window has ended (closed, or over), whether it is settled,
/// and whether it is paused.
pub fn shown_state(e: &proto::Event, now: DateTime<Utc>) -> String {
    let ended = e
        .ends_at
        .as_ref()
        .and_then(to_datetime)
        .is_some_and(|end| end <= now);
    let mut s = match (e.state == EventState::Live as i32, ended) {
        (true, true) => "ENDED".to_owned(),
        _ => state_name(e.state).to_owned(),
    };
    if e.archived_at.is_some() {
        s.push_str(" (ARCHIVED)");
    } else if e.state == EventState::Live as i32 && e.settled_at.is_some() {
        s.push_str(" (SETTLED)");
    }
    if e.paused {
        s.push_str(" (PAUSED)");
    }
    if e.offline {
        s.push_str(" (OFFLINE: rebuild it again)");
    }
    if e.shards > 1 {
        s.push_str(&format!(" ({} SHARDS)", e.shards));
    }
    s
}

/// The table `coupond events` prints: one line per event, aligned.
pub fn events_table(events: &[proto::Event]) -> String {
    let head = [
        "EVENT",
        "STATE",
        "TOTAL",
        "PRELOADED",
        "REMAINING",
        "ISSUED",
        "FINALIZED",
        "STARTS",
        "ENDS",
    ];
    let mut lines: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for e in events {
        lines.push(vec![
            e.event_id.clone(),
            shown_state(e, Utc::now()),
            e.total_count.to_string(),
            e.preloaded_count.to_string(),
            e.remaining_count.to_string(),
            e.issued_count.to_string(),
            e.finalized_count.to_string(),
            time(e.starts_at.as_ref()),
            time(e.ends_at.as_ref()),
        ]);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| match i {
                // Counts align right, words left.
                2..=6 => format!("{c:>w$}"),
                _ => format!("{c:<w$}"),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if events.is_empty() {
        out.push_str("(no events)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_table_aligns_its_columns() {
        let e = proto::Event {
            event_id: "drop-1".into(),
            state: EventState::Live as i32,
            total_count: 1000,
            preloaded_count: 1000,
            remaining_count: 990,
            issued_count: 10,
            finalized_count: 9,
            ..Default::default()
        };
        let t = events_table(&[e]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("EVENT   STATE  TOTAL  PRELOADED"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("drop-1  LIVE    1000       1000"),
            "{t}"
        );
        assert_eq!(events_table(&[]).lines().last(), Some("(no events)"));
    }

    #[test]
    fn an_ended_or_settled_event_is_not_shown_live() {
        let now = Utc::now();
        let at = |secs: i64| Some(timestamp(now + chrono::Duration::seconds(secs)));
        let live = proto::Event {
            state: EventState::Live as i32,
            ends_at: at(60),
            ..Default::default()
        };
        assert_eq!(shown_state(&live, now), "LIVE");
        let paused = proto::Event {
            paused: true,
            ..live.clone()
        };
        assert_eq!(shown_state(&paused, now), "LIVE (PAUSED)");
        let sharded = proto::Event {
            shards: 3,
            ..paused.clone()
        };
        assert_eq!(shown_state(&sharded, now), "LIVE (PAUSED) (3 SHARDS)");
        let closed = proto::Event {
            ends_at: at(-1),
            ..live.clone()
        };
        assert_eq!(shown_state(&closed, now), "ENDED");
        let settled = proto::Event {
            settled_at: at(0),
            ..closed
        };
        assert_eq!(shown_state(&settled, now), "ENDED (SETTLED)");
        let archived = proto::Event {
            archived_at: at(0),
            ..settled.clone()
        };
        assert_eq!(shown_state(&archived, now), "ENDED (ARCHIVED)");
        let preparing = proto::Event {
            state: EventState::Preparing as i32,
            ..live
        };
        assert_eq!(shown_state(&preparing, now), "PREPARING");
    }
}
