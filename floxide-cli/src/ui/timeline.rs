//! A run's step timeline: each lease a bar (holder, start, end; renewals as ticks), coloured
//! by how it ended (committed, failed, released, expired and taken over, or still held);
//! commits fenced out as red crosses on the lease they came too late for; then every event
//! as a table. It answers "why did this step run twice?".

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use floxide_core::distributed::{StepEvent, StepEventKind};
use floxide_core::ItemId;

use super::pages::escape;
use crate::render::{duration, timestamp};

/// The most leases drawn (the latest; the table lists every event kept).
const MAX_BARS: usize = 200;
const LABEL_W: f64 = 300.0;
const PLOT_W: f64 = 640.0;
const ROW_H: f64 = 22.0;

/// One lease, as drawn.
struct Bar<'e> {
    leased: &'e StepEvent,
    delivery: Option<u32>,
    start: SystemTime,
    /// When it ended and how (`None`: still held).
    end: Option<(SystemTime, &'static str)>,
    /// The expiry it was last given.
    until: Option<SystemTime>,
    renewals: Vec<SystemTime>,
    fenced: Vec<SystemTime>,
}

/// The timeline (SVG) and the event table of `events` (oldest first), as HTML.
pub(crate) fn render(events: &[StepEvent], now: SystemTime) -> String {
    if events.is_empty() {
        return "<p id=\"timeline\">No step has started yet.</p>".to_owned();
    }
    let bars = bars(events);
    let first = bars.iter().map(|b| b.start).min().unwrap_or(now);
    let open = bars.iter().any(|b| b.end.is_none());
    let last = events.iter().map(|e| e.at).max().unwrap_or(now);
    let last = if open { last.max(now) } else { last };
    let span = last
        .duration_since(first)
        .unwrap_or_default()
        .max(Duration::from_millis(1));
    let x = |t: SystemTime| {
        let d = t.duration_since(first).unwrap_or_default();
        LABEL_W + PLOT_W * (d.as_secs_f64() / span.as_secs_f64()).min(1.0)
    };
    let shown = &bars[bars.len().saturating_sub(MAX_BARS)..];
    let height = ROW_H * shown.len() as f64 + 24.0;
    let mut svg = format!(
        "<svg id=\"timeline\" width=\"{w}\" height=\"{height}\" viewBox=\"0 0 {w} {height}\" \
         font-family=\"sans-serif\" font-size=\"11\" role=\"img\">",
        w = LABEL_W + PLOT_W + 10.0
    );
    for (row, bar) in shown.iter().enumerate() {
        let y = ROW_H * row as f64 + 4.0;
        let (colour, outcome) = match bar.end {
            Some((_, "committed")) => ("#4a4", "committed"),
            Some((_, "failed")) => ("#c33", "failed"),
            Some((_, "expired")) => ("#e90", "expired: taken over"),
            Some((_, "released")) => ("#999", "released"),
            Some((_, other)) => ("#999", other),
            None => ("#39c", "held"),
        };
        let e = bar.leased;
        let worker = e.worker.as_ref().map_or("?", |w| w.0.as_str());
        let delivery = bar
            .delivery
            .map(|d| format!(" · delivery {d}"))
            .unwrap_or_default();
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{ty}\">{node} · {worker} · attempt {a}{delivery}</text>",
            ty = y + 13.0,
            node = escape(&e.node),
            worker = escape(worker),
            a = e.attempt,
        );
        let end = bar.end.map_or(now.max(bar.start), |(t, _)| t);
        let (x0, x1) = (x(bar.start), x(end).max(x(bar.start) + 2.0));
        let held = bar.end.map_or(String::new(), |(t, _)| {
            format!(
                " for {}",
                duration(t.duration_since(bar.start).unwrap_or_default())
            )
        });
        let _ = write!(
            svg,
            "<rect class=\"lease {outcome_class}\" x=\"{x0:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"14\" fill=\"{colour}\" rx=\"2\">\
             <title>{worker}: token {token}, {outcome}{held}{until}</title></rect>",
            outcome_class = outcome.split(':').next().unwrap_or(outcome),
            w = x1 - x0,
            token = e.token,
            worker = escape(worker),
            until = match (bar.end, bar.until) {
                (None, Some(u)) => format!(", lease until {}", timestamp(u)),
                _ => String::new(),
            },
        );
        for t in &bar.renewals {
            let tx = x(*t);
            let _ = write!(
                svg,
                "<line class=\"renewal\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{y}\" y2=\"{}\" stroke=\"#fff\" stroke-width=\"1.5\"/>",
                y + 14.0
            );
        }
        for t in &bar.fenced {
            let fx = x(*t);
            let _ = write!(
                svg,
                "<text class=\"fenced\" x=\"{:.1}\" y=\"{}\" fill=\"#c00\" font-weight=\"bold\">✕ commit fenced out</text>",
                fx - 4.0,
                y + 12.0
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{LABEL_W}\" y=\"{}\" fill=\"#666\">{}</text><text x=\"{}\" y=\"{}\" fill=\"#666\" text-anchor=\"end\">+{}</text></svg>",
        height - 4.0,
        escape(&timestamp(first)),
        LABEL_W + PLOT_W,
        height - 4.0,
        duration(span)
    );
    let mut table = String::from(
        "<table id=\"step-events\"><tr><th>When</th><th>Node</th><th>Item</th><th>Event</th>\
         <th>Worker</th><th>Token</th><th>Attempt</th><th></th></tr>",
    );
    for e in events {
        let detail = match &e.kind {
            StepEventKind::Leased { until, delivery } => {
                format!("delivery {delivery}, until {}", timestamp(*until))
            }
            StepEventKind::Renewed { until } => format!("until {}", timestamp(*until)),
            StepEventKind::Failed { retry_at: Some(at) } => format!("retry at {}", timestamp(*at)),
            StepEventKind::Failed { retry_at: None } => "dead-lettered".to_owned(),
            StepEventKind::Fenced => "refused: the lease was taken over".to_owned(),
            StepEventKind::Expired => "not renewed in time: back to the queue".to_owned(),
            _ => String::new(),
        };
        let _ = write!(
            table,
            "<tr class=\"{kind}\"><td>+{at}</td><td>{node}</td><td>{item}</td><td>{kind}</td><td>{worker}</td><td>{token}</td><td>{attempt}</td><td>{detail}</td></tr>",
            at = duration(e.at.duration_since(first).unwrap_or_default()),
            node = escape(&e.node),
            item = short(e.item_id),
            kind = e.kind.name(),
            worker = escape(e.worker.as_ref().map_or("-", |w| w.0.as_str())),
            token = e.token,
            attempt = e.attempt,
            detail = escape(&detail),
        );
    }
    table.push_str("</table>");
    format!("{svg}{table}")
}

/// The leases of `events`, in the order they were taken.
fn bars(events: &[StepEvent]) -> Vec<Bar<'_>> {
    let mut bars: Vec<Bar<'_>> = Vec::new();
    let mut index: HashMap<(ItemId, u64), usize> = HashMap::new();
    for e in events {
        let key = (e.item_id, e.token);
        let at = match index.get(&key) {
            Some(&i) => i,
            None => {
                // A lease whose start the history no longer holds starts at its first event.
                index.insert(key, bars.len());
                bars.push(Bar {
                    leased: e,
                    delivery: None,
                    start: e.at,
                    end: None,
                    until: None,
                    renewals: Vec::new(),
                    fenced: Vec::new(),
                });
                bars.len() - 1
            }
        };
        let bar = &mut bars[at];
        match &e.kind {
            StepEventKind::Leased { until, delivery } => {
                bar.leased = e;
                bar.start = e.at;
                bar.delivery = Some(*delivery);
                bar.until = Some(*until);
            }
            StepEventKind::Renewed { until } => {
                bar.renewals.push(e.at);
                bar.until = Some(*until);
            }
            StepEventKind::Fenced => bar.fenced.push(e.at),
            StepEventKind::Committed => bar.end = Some((e.at, "committed")),
            StepEventKind::Failed { .. } => bar.end = Some((e.at, "failed")),
            StepEventKind::Released => bar.end = Some((e.at, "released")),
            StepEventKind::Expired => bar.end = Some((e.at, "expired")),
            _ => {}
        }
    }
    bars
}

/// The first 8 hex digits of an item id (enough to tell a run's items apart on a page).
fn short(id: ItemId) -> String {
    id.to_string().chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use floxide_core::distributed::WorkerId;

    fn event(ms: u64, kind: StepEventKind, worker: &str, token: u64) -> StepEvent {
        StepEvent::new(
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
            ItemId::ROOT,
            "price",
            kind,
            Some(WorkerId::from(worker)),
            token,
            1,
        )
    }

    #[test]
    fn a_lease_taken_over_shows_the_expiry_the_new_holder_and_the_fenced_commit() {
        let t = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let events = vec![
            event(
                0,
                StepEventKind::Leased {
                    until: t(400),
                    delivery: 1,
                },
                "w1",
                1,
            ),
            event(100, StepEventKind::Renewed { until: t(500) }, "w1", 1),
            event(600, StepEventKind::Expired, "w1", 1),
            event(
                610,
                StepEventKind::Leased {
                    until: t(1010),
                    delivery: 2,
                },
                "w2",
                2,
            ),
            event(700, StepEventKind::Fenced, "w1", 1),
            event(800, StepEventKind::Committed, "w2", 2),
        ];
        let bars = bars(&events);
        assert_eq!(bars.len(), 2);
        assert_eq!(bars[0].end, Some((t(600), "expired")));
        assert_eq!(bars[0].renewals, vec![t(100)]);
        assert_eq!(bars[0].fenced, vec![t(700)]);
        assert_eq!(bars[1].delivery, Some(2));
        assert_eq!(bars[1].end, Some((t(800), "committed")));
        let html = render(&events, t(900));
        assert!(html.contains("class=\"lease expired\""), "{html}");
        assert!(html.contains("class=\"lease committed\""), "{html}");
        assert!(html.contains("commit fenced out"), "{html}");
        assert!(
            html.contains("price · w2 · attempt 1 · delivery 2"),
            "{html}"
        );
        assert!(html.contains("refused: the lease was taken over"), "{html}");
        assert_eq!(html.matches("class=\"renewal\"").count(), 1);
    }

    #[test]
    fn a_held_lease_runs_to_now_and_an_empty_history_says_so() {
        let t = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let events = vec![event(
            0,
            StepEventKind::Leased {
                until: t(30_000),
                delivery: 1,
            },
            "w1",
            1,
        )];
        let html = render(&events, t(1000));
        assert!(html.contains("class=\"lease held\""), "{html}");
        assert!(html.contains("lease until"), "{html}");
        assert!(render(&[], t(0)).contains("No step has started yet"));
    }
}
