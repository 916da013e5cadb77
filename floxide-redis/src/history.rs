//! A run's step history: the list the scripts append a line to at each lease transition
//! (`<pfx>sh:<run>`; the line format is in `lua/common.lua`), read back as [`StepEvent`]s.

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
        let lines = self
            .whole_list(&Keys::history(
                &self.keys().partition_of_run(run_id),
                run_id,
            ))
            .await?;
        // A line this version cannot read (written by another one) is left out.
        Ok(lines
            .iter()
            .filter_map(|l| parse_line(std::str::from_utf8(l).ok()?))
            .collect())
    }
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
}
