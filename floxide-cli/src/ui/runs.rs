//! The runs list (filters and pages answered by the backend, newest first) and the bulk
//! actions over a filter: a dry run that counts what would change, then the action, refused
//! if the count changed meanwhile.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use floxide_core::distributed::{
    DistributedError, RunAction, RunCursor, RunInfo, RunQuery, RunStatus,
};
use floxide_core::ItemId;
use serde::Deserialize;

use super::pages::{escape, page, post_form, url_segment};
use super::{checked_form, failure, AppState, CarriesCsrf, Problem};
use crate::render::timestamp_relative;

/// Runs per page of the runs list.
const PAGE: usize = 50;
/// The most runs one bulk action covers.
const MAX_BULK: usize = 10_000;

/// The runs list's filters, as typed into its form (and carried by its links).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RunsFilter {
    pub(crate) workflow: Option<String>,
    pub(crate) status: Option<String>,
    /// Runs with an item or an error at this node.
    pub(crate) node: Option<String>,
    /// Text in the run id, outputs, errors or items.
    pub(crate) q: Option<String>,
    /// Started at or after: a time (RFC 3339) or a duration ago (`15m`, `2h`, `3d`).
    pub(crate) since: Option<String>,
    /// Started before: the same forms.
    pub(crate) until: Option<String>,
    /// The page after this cursor.
    pub(crate) after: Option<String>,
}

/// A field's value, `None` when absent or blank.
fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// `text` as a time: RFC 3339 (`2026-03-01T12:00:00Z`, or without the zone, as UTC) or a
/// duration before `now` (`90s`, `15m`, `2h`, `3d`).
fn parse_time(field: &str, text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    humantime::parse_duration(text)
        .ok()
        .and_then(|ago| now.checked_sub(ago))
        .ok_or_else(|| {
            format!(
                "`{text}` ({field}) is neither a time (2026-03-01T12:00:00Z) nor a duration ago \
                 (90s, 15m, 2h, 3d)"
            )
        })
}

impl RunsFilter {
    /// The backend query of these filters, or what is wrong with them.
    fn query(&self, limit: usize, now: SystemTime) -> Result<RunQuery, String> {
        let mut query = RunQuery::new(limit);
        if let Some(workflow) = given(&self.workflow) {
            query = query.workflow(workflow);
        }
        if let Some(text) = given(&self.status) {
            let status = text.parse::<RunStatus>().map_err(|_| {
                format!("`{text}` is not a run status (pending, running, paused, completed, failed, cancelled)")
            })?;
            query = query.status(status);
        }
        if let Some(node) = given(&self.node) {
            query = query.node(node);
        }
        if let Some(text) = given(&self.q) {
            query = query.text(text);
        }
        let since = given(&self.since)
            .map(|t| parse_time("since", t, now))
            .transpose()?;
        let until = given(&self.until)
            .map(|t| parse_time("until", t, now))
            .transpose()?;
        query = query.started_between(since, until);
        Ok(query.after(given(&self.after).map(RunCursor::new)))
    }

    /// The filters that are set, by name (without the cursor).
    fn set_fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("workflow", &self.workflow),
            ("status", &self.status),
            ("node", &self.node),
            ("q", &self.q),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, given(value)?)))
    }

    /// The filters as a URL query (without the cursor).
    fn url_query(&self) -> String {
        self.set_fields()
            .map(|(name, value)| format!("{name}={}", url_segment(value)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Whether any filter is set.
    fn is_set(&self) -> bool {
        self.set_fields().next().is_some()
    }
}

/// `/`: the filter form, one page of runs, a link to the next page, the bulk actions.
pub(crate) async fn runs_page(
    State(state): State<Arc<AppState>>,
    Query(filter): Query<RunsFilter>,
) -> Response {
    let query = match filter.query(PAGE, SystemTime::now()) {
        Ok(query) => query,
        Err(problem) => return failure(StatusCode::BAD_REQUEST, "Bad filter", &problem),
    };
    match state.backend.query_runs(&query).await {
        Ok(found) => Html(render_runs(&state, &filter, &found.runs, found.next)).into_response(),
        Err(DistributedError::InvalidCursor(cursor)) => failure(
            StatusCode::BAD_REQUEST,
            "Bad page",
            &format!("`{cursor}` is not a page of this list: start again from the first page"),
        ),
        Err(e) => failure(StatusCode::BAD_GATEWAY, "Backend error", &e.to_string()),
    }
}

fn render_runs(
    state: &AppState,
    filter: &RunsFilter,
    runs: &[RunInfo],
    next: Option<RunCursor>,
) -> String {
    let now = SystemTime::now();
    let field = |name: &str, label: &str, value: &Option<String>, hint: &str| {
        format!(
            "<label>{label} <input name=\"{name}\" value=\"{}\" placeholder=\"{hint}\" size=\"12\"></label> ",
            escape(given(value).unwrap_or(""))
        )
    };
    let status_options: String = std::iter::once("")
        .chain(RunStatus::ALL.map(RunStatus::as_str))
        .map(|s| {
            let selected = if given(&filter.status).unwrap_or("") == s {
                " selected"
            } else {
                ""
            };
            let label = if s.is_empty() { "any status" } else { s };
            format!("<option value=\"{s}\"{selected}>{label}</option>")
        })
        .collect();
    let mut body = format!(
        "<form method=\"get\" action=\"/\" id=\"filters\">{}<select name=\"status\">{status_options}</select> {}{}{}{}\
         <button>Filter</button> <a href=\"/?status=failed\">failed only</a> <a href=\"/\">clear</a></form>",
        field("workflow", "Workflow", &filter.workflow, "any"),
        field("node", "Node", &filter.node, "any"),
        field("q", "Text", &filter.q, "in ids, outputs, errors"),
        field("since", "Since", &filter.since, "1h or a time"),
        field("until", "Until", &filter.until, "a time"),
    );
    let _ = write!(
        body,
        "<p id=\"shown\">{} shown{}</p>",
        plural(runs.len(), "run"),
        if filter.after.is_some() {
            " (a later page)"
        } else {
            ""
        }
    );
    body.push_str("<table id=\"runs\"><tr><th>Run</th><th>Workflow</th><th>Status</th><th>Started</th><th>Finished</th></tr>");
    for run in runs {
        let _ = write!(
            body,
            "<tr data-run=\"{id}\"><td><a href=\"/runs/{link}\">{id}</a></td><td>{wf}</td><td class=\"status\">{st}</td><td>{t0}</td><td>{t1}</td></tr>",
            id = escape(&run.run_id),
            link = url_segment(&run.run_id),
            wf = escape(&run.workflow),
            st = run.status,
            t0 = escape(&timestamp_relative(run.started_at, now)),
            t1 = run
                .finished_at
                .map(|t| escape(&timestamp_relative(t, now)))
                .unwrap_or_else(|| "-".to_owned()),
        );
    }
    body.push_str("</table><p>");
    let filters = filter.url_query();
    if filter.after.is_some() {
        let _ = write!(body, "<a href=\"/?{filters}\">newest</a> ");
    }
    if let Some(next) = next {
        let _ = write!(
            body,
            "<a id=\"next\" href=\"/?{filters}{}after={}\">older</a>",
            if filters.is_empty() { "" } else { "&" },
            url_segment(next.as_str())
        );
    }
    body.push_str("</p>");
    if !state.read_only && filter.is_set() {
        body.push_str("<p>Over every run that matches: ");
        for (action, label) in BULK_LABELS {
            let _ = write!(
                body,
                "<a class=\"bulk\" id=\"bulk-{action}\" href=\"/bulk?action={action}&{filters}\">{label}…</a> "
            );
        }
        body.push_str("</p>");
    }
    page("Runs", &body, filter.after.is_none())
}

/// `n thing` or `n things`.
pub(crate) fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// Bulk actions and their buttons.
const BULK_LABELS: [(&str, &str); 4] = [
    ("cancel", "Cancel"),
    ("pause", "Pause"),
    ("resume", "Resume"),
    ("requeue", "Requeue the dead letters"),
];

/// What a bulk action does to each matching run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bulk {
    Control(RunAction),
    Requeue,
}

impl Bulk {
    fn parse(text: &str) -> Option<Bulk> {
        Some(match text {
            "cancel" => Bulk::Control(RunAction::Cancel),
            "pause" => Bulk::Control(RunAction::Pause),
            "resume" => Bulk::Control(RunAction::Resume),
            "requeue" => Bulk::Requeue,
            _ => return None,
        })
    }

    /// Whether the action changes a run with `status`.
    fn applies_to(self, status: RunStatus) -> bool {
        match self {
            Bulk::Control(RunAction::Cancel) => !status.is_finished(),
            Bulk::Control(RunAction::Pause) => {
                matches!(status, RunStatus::Pending | RunStatus::Running)
            }
            Bulk::Control(RunAction::Resume) => status == RunStatus::Paused,
            // Dead letters are looked up for every matching run.
            Bulk::Requeue => true,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Bulk::Control(RunAction::Cancel) => "cancel",
            Bulk::Control(RunAction::Pause) => "pause",
            Bulk::Control(RunAction::Resume) => "resume",
            Bulk::Requeue => "requeue",
        }
    }
}

/// What a bulk action would change: run ids, or dead letters.
enum Targets {
    Runs(RunAction, Vec<String>),
    Letters(Vec<(String, ItemId)>),
}

impl Targets {
    fn len(&self) -> usize {
        match self {
            Targets::Runs(_, runs) => runs.len(),
            Targets::Letters(letters) => letters.len(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Targets::Runs(_, runs) => plural(runs.len(), "run"),
            Targets::Letters(letters) => plural(letters.len(), "dead letter"),
        }
    }
}

/// Every run of `filter` the action applies to (following every page), or why not.
async fn targets(state: &AppState, filter: &RunsFilter, bulk: Bulk) -> Result<Targets, Problem> {
    let mut query = filter
        .query(500, SystemTime::now())
        .map_err(|problem| Problem(StatusCode::BAD_REQUEST, "Bad filter", problem))?
        .after(None);
    let mut runs = Vec::new();
    loop {
        let found = state
            .backend
            .query_runs(&query)
            .await
            .map_err(|e| Problem(StatusCode::BAD_GATEWAY, "Backend error", e.to_string()))?;
        runs.extend(
            found
                .runs
                .into_iter()
                .filter(|r| bulk.applies_to(r.status))
                .map(|r| r.run_id),
        );
        if runs.len() > MAX_BULK {
            return Err(Problem(
                StatusCode::BAD_REQUEST,
                "Too many runs",
                format!("more than {MAX_BULK} runs match: narrow the filter"),
            ));
        }
        match found.next {
            Some(next) => query = query.after(Some(next)),
            None => break,
        }
    }
    if let Bulk::Control(action) = bulk {
        return Ok(Targets::Runs(action, runs));
    }
    let runs: BTreeSet<String> = runs.into_iter().collect();
    let letters = state
        .backend
        .dead_letters()
        .await
        .map_err(|e| Problem(StatusCode::BAD_GATEWAY, "Backend error", e.to_string()))?;
    Ok(Targets::Letters(
        letters
            .into_iter()
            .filter(|d| runs.contains(&d.run_id))
            .map(|d| (d.run_id, d.item_id))
            .collect(),
    ))
}

/// The action named by a request, or a clear page.
/// The bulk action named by `action` and the runs `filter` gives it (the dry run and the
/// action itself read them alike).
async fn planned(
    state: &AppState,
    action: Option<&str>,
    filter: &RunsFilter,
) -> Result<(Bulk, Targets), Problem> {
    let bulk = bulk_of(action)?;
    Ok((bulk, targets(state, filter, bulk).await?))
}

fn bulk_of(action: Option<&str>) -> Result<Bulk, Problem> {
    let action = action.unwrap_or("");
    Bulk::parse(action).ok_or_else(|| {
        Problem(
            StatusCode::BAD_REQUEST,
            "Unknown action",
            format!("`{action}` is not a bulk action: cancel, pause, resume or requeue"),
        )
    })
}

/// A bulk action's request: the action and the filters.
#[derive(Debug, Deserialize)]
pub(crate) struct BulkRequest {
    action: Option<String>,
    #[serde(flatten)]
    filter: RunsFilter,
}

/// `GET /bulk`: the dry run: how many runs (or dead letters) the action would change, and
/// the button that does it.
pub(crate) async fn bulk_preview(
    State(state): State<Arc<AppState>>,
    Query(request): Query<BulkRequest>,
) -> Response {
    if state.read_only {
        return failure(
            StatusCode::FORBIDDEN,
            "Read-only",
            "this dashboard is read-only",
        );
    }
    let (bulk, targets) = match planned(&state, request.action.as_deref(), &request.filter).await {
        Ok(planned) => planned,
        Err(problem) => return problem.into_response(),
    };
    let mut body = format!(
        "<p id=\"dry-run\">This would {} {}.</p>",
        bulk.what(),
        targets.describe()
    );
    if targets.len() > 0 {
        let mut fields = vec![
            ("action", bulk.what().to_owned()),
            ("expect", targets.len().to_string()),
        ];
        fields.extend(
            request
                .filter
                .set_fields()
                .map(|(name, value)| (name, value.to_owned())),
        );
        body.push_str(&post_form(
            "/bulk",
            &state.csrf,
            &fields,
            &format!(
                "<button id=\"confirm\">{} {}</button>",
                capitalized(bulk.what()),
                targets.describe()
            ),
        ));
    }
    let _ = write!(
        body,
        "<a href=\"/?{}\">back to the runs</a>",
        request.filter.url_query()
    );
    Html(page("Bulk action", &body, false)).into_response()
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A bulk action's confirmation.
#[derive(Debug, Deserialize)]
pub(crate) struct BulkForm {
    csrf: String,
    action: Option<String>,
    /// The count the dry run showed.
    expect: Option<usize>,
    #[serde(flatten)]
    filter: RunsFilter,
}

impl CarriesCsrf for BulkForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /bulk`: the action over every run of the filter, if they are still as many as the
/// dry run counted.
pub(crate) async fn bulk_apply(
    State(state): State<Arc<AppState>>,
    form: Result<Form<BulkForm>, FormRejection>,
) -> Response {
    let form = match checked_form(&state, form) {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let (_, targets) = match planned(&state, form.action.as_deref(), &form.filter).await {
        Ok(planned) => planned,
        Err(problem) => return problem.into_response(),
    };
    if Some(targets.len()) != form.expect {
        return failure(
            StatusCode::CONFLICT,
            "Changed meanwhile",
            &format!(
                "the dry run counted {}, the filter matches {} now: nothing was done; look again",
                form.expect
                    .map_or_else(|| "nothing".to_owned(), |n| n.to_string()),
                targets.describe()
            ),
        );
    }
    // Each target on its own: a run that finished (or a letter that went) meanwhile is
    // skipped; the first other error is shown.
    let mut outcomes = Vec::new();
    match &targets {
        Targets::Runs(action, runs) => {
            for run in runs {
                outcomes.push(state.backend.control(run, *action).await.map(|_| ()));
            }
        }
        Targets::Letters(letters) => {
            for (run, item) in letters {
                outcomes.push(state.backend.requeue_dead_letter(run, *item).await);
            }
        }
    }
    let skipped = |e: &DistributedError| {
        matches!(
            e,
            DistributedError::InvalidRunState { .. }
                | DistributedError::UnknownRun(_)
                | DistributedError::UnknownDeadLetter { .. }
        )
    };
    if let Some(e) = outcomes
        .into_iter()
        .filter_map(Result::err)
        .find(|e| !skipped(e))
    {
        return failure(StatusCode::BAD_GATEWAY, "Backend error", &e.to_string());
    }
    Redirect::to(&format!("/?{}", form.filter.url_query())).into_response()
}
