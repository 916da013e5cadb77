//! A run's step history: the list the scripts append a line to at each lease transition
//! (`<pfx>sh:<run>`; the line format is in `lua/common/base.lua`), read back as [`StepEvent`]s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floxide_core::distributed::{DistributedError, StepEvent, StepEventKind, WorkerId};
use floxide_core::ItemId;

use crate::keys::Keys;
use crate::RedisBackend;

impl RedisBackend {
    pub(crate) async fn history_of(
        &self,
        run_id: &str,
    ) -> Result<Vec<StepEvent>, DistributedError> {
        self.status_of(run_id).await?;
        // The run's first lease, kept with its items (see `lua/common/base.lua`).
        let pfx = self.keys().partition_of_run(run_id);
        let items = Keys::items(&pfx, run_id);
        let items = &items;
        let kept: (Option<String>, Option<String>) = self
            .client()
            .run(|mut conn| async move {
                redis::cmd("HMGET")
                    .arg(items)
                    .arg("hl")
                    .arg("hw")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let first = first_lease_line(kept).map(String::into_bytes);
        let lines = self.whole_list(&Keys::history(&pfx, run_id)).await?;
        // (A finish between the two reads moves the line to the list's front: it is read once.)
        let first = first.filter(|l| lines.first() != Some(l));
        // A line this version cannot read (written by another one) is left out.
        Ok(first
            .iter()
            .chain(&lines)
            .filter_map(|l| parse_line(std::str::from_utf8(l).ok()?))
            .collect())
    }
}

/// The history line of a run's first lease from the two fields its item hash keeps it in:
/// `hl` = `<ms> <token> <lease end ms> <item id>`, `hw` = `<node> <worker>`.
fn first_lease_line((hl, hw): (Option<String>, Option<String>)) -> Option<String> {
    let (hl, hw) = (hl?, hw?);
    let mut f = hl.splitn(4, ' ');
    let (at, token, end, item) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let (node, worker) = hw.split_once(' ')?;
    Some(format!("L {at} {token} 1 1 {end} {item} {node} {worker}"))
}

fn ms(text: &str) -> Option<SystemTime> {
    Some(UNIX_EPOCH + Duration::from_millis(text.parse().ok()?))
}

/// `<kind> <ms> <token> <attempt> <delivery or -> <end ms or -> <item id> <node> <worker>`.
fn parse_line(line: &str) -> Option<StepEvent> {
    let mut f = line.splitn(9, ' ');
    let (kind, at, token, attempt) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let (delivery, end, item, node) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let worker = f.next().filter(|w| !w.is_empty()).map(WorkerId::from);
    let kind = match kind {
        "L" => StepEventKind::Leased {
            until: ms(end)?,
            delivery: delivery.parse().ok()?,
        },
        "H" => StepEventKind::Renewed { until: ms(end)? },
        "E" => StepEventKind::Expired,
        "C" => StepEventKind::Committed,
        "Z" => StepEventKind::Fenced,
        "F" => StepEventKind::Failed { retry_at: ms(end) },
        "R" => StepEventKind::Released,
        _ => return None,
    };
    Some(StepEvent::new(
        ms(at)?,
        item.parse::<ItemId>().ok()?,
        node,
        kind,
        worker,
        token.parse().ok()?,
        attempt.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back_as_events() {
        let id = "0123456789abcdef0123456789abcdef";
        let leased = parse_line(&format!("L 1000 3 2 1 31000 {id} price worker one")).unwrap();
        assert_eq!(leased.kind.name(), "leased");
        assert_eq!(leased.worker, Some(WorkerId::from("worker one")));
        assert_eq!((leased.token, leased.attempt), (3, 2));
        assert_eq!(
            leased.kind,
            StepEventKind::Leased {
                until: UNIX_EPOCH + Duration::from_secs(31),
                delivery: 1
            }
        );
        let failed = parse_line(&format!("F 1000 3 2 - - {id} price ")).unwrap();
        assert_eq!(failed.kind, StepEventKind::Failed { retry_at: None });
        assert_eq!(failed.worker, None);
        assert!(parse_line("L 1000 nonsense").is_none());
        assert!(parse_line(&format!("Q 1000 3 2 - - {id} price w")).is_none());
    }

    #[test]
    fn a_first_lease_kept_with_the_items_reads_as_its_line() {
        let id = "0123456789abcdef0123456789abcdef";
        let kept = |hl: &str, hw: &str| first_lease_line((Some(hl.into()), Some(hw.into())));
        let line = kept(&format!("1000 1 31000 {id}"), "price worker one").unwrap();
        assert_eq!(line, format!("L 1000 1 1 1 31000 {id} price worker one"));
        let event = parse_line(&line).unwrap();
        assert_eq!(event.worker, Some(WorkerId::from("worker one")));
        assert_eq!(
            (event.token, event.attempt, event.node.as_str()),
            (1, 1, "price")
        );
        assert!(
            kept("1000 1", "price w").is_none(),
            "a field missing its parts"
        );
        assert!(first_lease_line((None, Some("price w".into()))).is_none());
    }
}
