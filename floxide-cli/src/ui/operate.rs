//! The dashboard's operator views: workers, queues, dead letters (with requeue and drop,
//! one at a time or all at once).

use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use floxide_core::ItemId;
use serde::Deserialize;

use super::history::sparkline;
use super::pages::{escape, page, post_form};
use super::{failure, AppState};
use crate::render::timestamp_relative;

/// How often workers report their health (their liveness is judged by it, as by
/// `floxide workers`).
const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// `/workers`: each worker's liveness, current item, steps (and their rate over the last
/// readings) and errors.
pub(crate) async fn workers(State(state): State<Arc<AppState>>) -> Response {
    let workers = match state.backend.workers().await {
        Ok(workers) => workers,
        Err(e) => return failure(StatusCode::BAD_GATEWAY, "Backend error", &e.to_string()),
    };
    let now = SystemTime::now();
    let rates = state.history.worker_rates();
    let mut body = format!(
        "<p>{}</p><table id=\"workers\"><tr><th>Worker</th><th>Workflow</th><th>Host</th>\
         <th>Liveness</th><th>Status</th><th>Last heartbeat</th><th>Current item</th><th>Steps</th><th>Steps/s</th><th>Errors</th></tr>",
        super::runs::plural(workers.len(), "worker")
    );
    for w in &workers {
        let current = match (&w.current_work_item_run_id, w.current_work_item) {
            (Some(run), Some(item)) => format!(
                "<a href=\"/runs/{}\">{}</a> {item}",
                super::pages::url_segment(run),
                escape(run)
            ),
            _ => "-".to_owned(),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{} ({})</td><td class=\"liveness\">{}</td><td>{:?}</td><td>{}</td><td>{current}</td>\
             <td>{}</td><td class=\"rate\">{}</td><td>{}</td></tr>",
            escape(&w.worker_id.0),
            escape(&w.workflow),
            escape(&w.host),
            w.pid,
            crate::workers::liveness(w.liveness(now, REPORT_INTERVAL)),
            w.status,
            escape(&timestamp_relative(w.last_heartbeat, now)),
            w.steps_done,
            rates
                .get(&w.worker_id.0)
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
            w.error_count
        );
    }
    body.push_str("</table>");
    Html(page("Workers", &body, true)).into_response()
}

/// `/queues`: per registered workflow, ready, delayed, in-flight items, dead letters,
/// reclaimed leases, and charts of the last minutes' throughput and ready items.
pub(crate) async fn queues(State(state): State<Arc<AppState>>) -> Response {
    let workflows = match super::registered_workflows(&*state.backend).await {
        Ok(workflows) => workflows,
        Err(e) => return failure(StatusCode::BAD_GATEWAY, "Backend error", &e.to_string()),
    };
    let series = state.history.workflow_series();
    let mut body = String::from(
        "<table id=\"queues\"><tr><th>Workflow</th><th>Ready</th><th>Delayed</th><th>In flight</th>\
         <th>Dead letters</th><th>Leases reclaimed</th><th>Steps per second, last minutes</th>\
         <th>Ready, last minutes</th></tr>",
    );
    for workflow in &workflows {
        match state.backend.queue_stats(workflow).await {
            Ok(Some(q)) => {
                let recent = series.get(workflow).cloned().unwrap_or_default();
                let ready: Vec<f64> = recent.ready.iter().map(|&n| n as f64).collect();
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td class=\"throughput\">{}</td><td>{}</td></tr>",
                    escape(workflow),
                    q.ready,
                    q.delayed,
                    q.in_flight,
                    q.dead_letters,
                    q.leases_reclaimed,
                    sparkline(&recent.steps_per_second, "steps/s"),
                    sparkline(&ready, "ready"),
                );
            }
            Ok(None) => {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td colspan=\"7\">this backend keeps no queue counters</td></tr>",
                    escape(workflow)
                );
            }
            Err(e) => return failure(StatusCode::BAD_GATEWAY, "Backend error", &e.to_string()),
        }
    }
    body.push_str("</table>");
    Html(page("Queues", &body, true)).into_response()
}

/// `/dead-letters`: each letter's error and payload, with requeue and drop buttons, and both
/// actions for all of them at once.
pub(crate) async fn dead_letters(State(state): State<Arc<AppState>>) -> Response {
    let letters = match state.backend.dead_letters().await {
        Ok(letters) => letters,
        Err(e) => return failure(StatusCode::BAD_GATEWAY, "Backend error", &e.to_string()),
    };
    let now = SystemTime::now();
    let mut body = format!(
        "<p id=\"count\">{}</p>",
        super::runs::plural(letters.len(), "dead letter")
    );
    if !state.read_only && !letters.is_empty() {
        // The count shown travels with the form: if it changed meanwhile, nothing is done.
        for (action, label) in [("requeue", "Requeue all"), ("drop", "Drop all")] {
            body.push_str(&post_form(
                &format!("/dead-letters/{action}"),
                &state.csrf,
                &[("expect", letters.len().to_string())],
                &format!(
                    "<button id=\"{action}-all\">{label} {}</button>",
                    letters.len()
                ),
            ));
        }
    }
    body.push_str(
        "<table id=\"letters\"><tr><th>Run</th><th>Item</th><th>Node</th><th>Attempt</th><th>When</th>\
         <th>Error</th><th>Payload</th><th></th></tr>",
    );
    for d in &letters {
        let mut actions = String::new();
        if !state.read_only {
            for (action, label) in [("requeue", "Requeue"), ("drop", "Drop")] {
                actions.push_str(&post_form(
                    &format!("/dead-letters/{action}"),
                    &state.csrf,
                    &[("id", format!("{}:{}", d.run_id, d.item_id))],
                    &format!("<button>{label}</button>"),
                ));
            }
        }
        let _ = write!(
            body,
            "<tr><td><a href=\"/runs/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{actions}</td></tr>",
            super::pages::url_segment(&d.run_id),
            escape(&d.run_id),
            d.item_id,
            escape(&d.node),
            d.attempt,
            escape(&timestamp_relative(d.at, now)),
            escape(&d.error),
            escape(&d.payload)
        );
    }
    body.push_str("</table>");
    Html(page("Dead letters", &body, true)).into_response()
}

/// A dead-letter action's form: one letter (`id` = `<run>:<item>`), or all of them when the
/// count is still `expect`.
#[derive(Debug, Deserialize)]
pub(crate) struct LetterForm {
    csrf: String,
    id: Option<String>,
    expect: Option<usize>,
}

impl super::CarriesCsrf for LetterForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /dead-letters/{requeue,drop}`.
pub(crate) async fn letter_action(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(action): axum::extract::Path<String>,
    form: Result<Form<LetterForm>, FormRejection>,
) -> Response {
    let form = match super::checked_form(&state, form) {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let requeue = match action.as_str() {
        "requeue" => true,
        "drop" => false,
        other => {
            return failure(
                StatusCode::NOT_FOUND,
                "Unknown action",
                &format!("`{other}` is not a dead-letter action: requeue or drop"),
            )
        }
    };
    let targets: Vec<(String, ItemId)> = match (&form.id, form.expect) {
        (Some(id), _) => {
            let parsed = id
                .rsplit_once(':')
                .and_then(|(run, item)| Some((run.to_owned(), item.parse::<ItemId>().ok()?)));
            match parsed {
                Some(target) => vec![target],
                None => {
                    return failure(
                        StatusCode::BAD_REQUEST,
                        "Bad dead letter id",
                        &format!("`{id}` is not `<run id>:<item id>`"),
                    )
                }
            }
        }
        (None, Some(expect)) => {
            let letters = match state.backend.dead_letters().await {
                Ok(letters) => letters,
                Err(e) => return failure(StatusCode::BAD_GATEWAY, "Backend error", &e.to_string()),
            };
            if letters.len() != expect {
                return failure(
                    StatusCode::CONFLICT,
                    "Changed meanwhile",
                    &format!(
                        "the page showed {expect} dead letters, there are {} now: nothing was done; look again",
                        letters.len()
                    ),
                );
            }
            letters.into_iter().map(|d| (d.run_id, d.item_id)).collect()
        }
        (None, None) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "Nothing to do",
                "name a dead letter (`id`) or confirm the count of all of them (`expect`)",
            )
        }
    };
    for (run, item) in &targets {
        let done = if requeue {
            state.backend.requeue_dead_letter(run, *item).await
        } else {
            state.backend.drop_dead_letter(run, *item).await
        };
        if let Err(e) = done {
            return failure(
                StatusCode::CONFLICT,
                "Refused",
                &format!("{run}:{item}: {e}"),
            );
        }
    }
    Redirect::to("/dead-letters").into_response()
}
