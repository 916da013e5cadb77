//! `floxide dlq …`: list, re-enqueue and drop dead letters.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::{json, Value};

use crate::args::DeadLetterId;
use crate::commands::{stored, CliError, Session};
use crate::render::{rfc3339, shorten, timestamp_relative, Table};

/// A dead letter, for JSON.
#[derive(Debug, Serialize)]
struct DeadLetterView {
    /// `<run id>:<item id>`: what `requeue` and `drop` take.
    id: String,
    run_id: String,
    item_id: String,
    node: String,
    error: String,
    attempt: u32,
    deliveries: u32,
    at: String,
    /// The stored item: JSON, or a text summary of bytes that are not.
    payload: Value,
}

/// `floxide dlq list`.
pub async fn list(s: &mut Session) -> Result<(), CliError> {
    let letters = s.backend.dead_letters().await?;
    let now = SystemTime::now();
    let views: Vec<DeadLetterView> = letters
        .iter()
        .map(|d| DeadLetterView {
            id: DeadLetterId {
                run_id: d.run_id.clone(),
                item_id: d.item_id,
            }
            .to_string(),
            run_id: d.run_id.clone(),
            item_id: d.item_id.to_string(),
            node: d.node.clone(),
            error: d.error.clone(),
            attempt: d.attempt,
            deliveries: d.deliveries,
            at: rfc3339(d.at),
            payload: stored(&d.payload),
        })
        .collect();
    s.print(&views, |views| {
        if views.is_empty() {
            return "no dead letters\n".to_owned();
        }
        let mut table = Table::new(&[
            "ID",
            "NODE",
            "ATTEMPT",
            "DELIVERIES",
            "AT",
            "ERROR",
            "PAYLOAD",
        ]);
        for (d, v) in letters.iter().zip(views) {
            table.row(vec![
                v.id.clone(),
                v.node.clone(),
                v.attempt.to_string(),
                v.deliveries.to_string(),
                timestamp_relative(d.at, now),
                shorten(&v.error, 60),
                shorten(&d.payload, 40),
            ]);
        }
        table.render()
    })
}

/// `floxide dlq requeue`: the given ids in order (stopping at the first unknown one), or all.
pub async fn requeue(s: &mut Session, ids: Vec<DeadLetterId>, all: bool) -> Result<(), CliError> {
    let ids = if all {
        s.backend
            .dead_letters()
            .await?
            .into_iter()
            .map(|d| DeadLetterId {
                run_id: d.run_id,
                item_id: d.item_id,
            })
            .collect()
    } else {
        ids
    };
    let mut done = Vec::new();
    for id in &ids {
        if let Err(e) = s.backend.requeue_dead_letter(&id.run_id, id.item_id).await {
            report(s, "requeued", &done)?;
            return Err(e.into());
        }
        done.push(id.to_string());
    }
    report(s, "requeued", &done)
}

/// `floxide dlq drop`: the given ids in order, stopping at the first unknown one.
pub async fn drop(s: &mut Session, ids: Vec<DeadLetterId>) -> Result<(), CliError> {
    let mut done = Vec::new();
    for id in &ids {
        if let Err(e) = s.backend.drop_dead_letter(&id.run_id, id.item_id).await {
            report(s, "dropped", &done)?;
            return Err(e.into());
        }
        done.push(id.to_string());
    }
    report(s, "dropped", &done)
}

/// `{"<verb>": [ids]}`, or a line per id. Printed also when a later id failed, so that the
/// caller knows which ones were handled.
fn report(s: &mut Session, verb: &str, ids: &[String]) -> Result<(), CliError> {
    s.print(&json!({ verb: ids }), |_| {
        if ids.is_empty() {
            return format!("nothing {verb}\n");
        }
        ids.iter().map(|id| format!("{verb} {id}\n")).collect()
    })
}
