//! Listing runs one page at a time, with filters: [`RunQuery`] in, [`RunPage`] out.
//!
//! Pages are newest first and continue from an opaque [`RunCursor`], so that a backend holding
//! a million finished runs answers a page without loading them all. Filters on the run's
//! record (workflow, status, start time) are cheap; filters on its items and errors (node,
//! text) need more reads per run, so a backend examines at most [`RunQuery::scan_budget`]
//! runs per page: a page may then hold fewer matches than asked, with a cursor to go on.

use std::time::SystemTime;

use crate::distributed::{DistributedError, RunInfo, RunStatus};

use super::AdminBackend;

/// How many runs one page may examine by default when a filter needs more than the run's
/// record (node, text).
pub const DEFAULT_SCAN_BUDGET: usize = 2_000;

/// Which runs to list: filters, where to continue, how many.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunQuery {
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs started at or after this time.
    pub started_after: Option<SystemTime>,
    /// Only runs started before this time.
    pub started_before: Option<SystemTime>,
    /// Only runs with an item at this node, or an error recorded there.
    pub node: Option<String>,
    /// Only runs where this text occurs (ignoring case) in the run id, its input, an output,
    /// the run's error, a recorded step error, or the payload of an item still stored (a
    /// finished run's items may be gone).
    pub text: Option<String>,
    /// Continue after this point (from the previous page's [`RunPage::next`]).
    pub after: Option<RunCursor>,
    /// The most runs in the page (at least 1 is shown).
    pub limit: usize,
    /// The most runs one page examines when a filter other than the start time is set (a
    /// backend with an index for a filter may examine fewer).
    pub scan_budget: usize,
}

impl Default for RunQuery {
    fn default() -> Self {
        RunQuery::new(50)
    }
}

impl RunQuery {
    /// The newest `limit` runs, unfiltered.
    pub fn new(limit: usize) -> Self {
        RunQuery {
            workflow: None,
            status: None,
            started_after: None,
            started_before: None,
            node: None,
            text: None,
            after: None,
            limit,
            scan_budget: DEFAULT_SCAN_BUDGET,
        }
    }

    /// Only runs of `workflow`.
    pub fn workflow(mut self, workflow: impl Into<String>) -> Self {
        self.workflow = Some(workflow.into());
        self
    }

    /// Only runs with `status`.
    pub fn status(mut self, status: RunStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only runs started in `[after, before)` (either bound optional).
    pub fn started_between(
        mut self,
        after: Option<SystemTime>,
        before: Option<SystemTime>,
    ) -> Self {
        self.started_after = after;
        self.started_before = before;
        self
    }

    /// Only runs with an item or an error at `node`.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Only runs where `text` occurs (see [`RunQuery::text`]).
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// The page after `cursor`.
    pub fn after(mut self, cursor: Option<RunCursor>) -> Self {
        self.after = cursor;
        self
    }

    /// At most `budget` runs examined per page when a filter other than the start time is set.
    pub fn scan_budget(mut self, budget: usize) -> Self {
        self.scan_budget = budget;
        self
    }

    /// Whether a filter other than the start time is set: a backend that finds runs by start
    /// time examines at most [`RunQuery::scan_budget`] of them per page.
    pub fn is_filtered(&self) -> bool {
        self.workflow.is_some() || self.status.is_some() || self.needs_details()
    }

    /// Whether a filter needs the run's items or errors, not only its record.
    pub fn needs_details(&self) -> bool {
        self.node.is_some() || self.text.is_some()
    }

    /// Whether `info` passes the filters on the run's record (workflow, status, start time).
    pub fn matches_record(&self, info: &RunInfo) -> bool {
        self.workflow.as_ref().is_none_or(|w| *w == info.workflow)
            && self.status.is_none_or(|s| s == info.status)
            && self.started_after.is_none_or(|t| info.started_at >= t)
            && self.started_before.is_none_or(|t| info.started_at < t)
    }

    /// Whether the run passes every filter, reading its items and errors from `backend` when
    /// a filter needs them.
    ///
    /// # Errors
    /// A backend error (a run that vanished meanwhile does not match).
    pub async fn matches<B: AdminBackend + ?Sized>(
        &self,
        backend: &B,
        info: &RunInfo,
    ) -> Result<bool, DistributedError> {
        if !self.matches_record(info) {
            return Ok(false);
        }
        if !self.needs_details() {
            return Ok(true);
        }
        let (errors, items) = match (
            backend.errors(&info.run_id).await,
            backend.work_items(&info.run_id).await,
        ) {
            (Ok(errors), Ok(items)) => (errors, items),
            // The run passed its retention meanwhile.
            (Err(DistributedError::UnknownRun(_)), _)
            | (_, Err(DistributedError::UnknownRun(_))) => return Ok(false),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        if let Some(node) = &self.node {
            if !items.iter().any(|i| i.node == *node) && !errors.iter().any(|e| e.node == *node) {
                return Ok(false);
            }
        }
        if let Some(text) = &self.text {
            let input = match backend.run_input(&info.run_id).await {
                Ok(input) => input,
                Err(DistributedError::UnknownRun(_)) => return Ok(false),
                Err(e) => return Err(e),
            };
            let needle = text.to_lowercase();
            let found = |hay: &str| hay.to_lowercase().contains(&needle);
            let hit = found(&info.run_id)
                || input.is_some_and(|bytes| found(&crate::distributed::payload_text(&bytes)))
                || info.outputs.iter().any(|o| found(&o.to_string()))
                || info.output.as_ref().is_some_and(|o| found(&o.to_string()))
                || info.error.as_deref().is_some_and(found)
                || errors.iter().any(|e| found(&e.error))
                || items.iter().any(|i| found(&i.payload));
            if !hit {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Where a page of runs ended: pass it to [`RunQuery::after`] for the next page. Opaque: each
/// backend writes its own (a position in its index of runs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunCursor(String);

impl RunCursor {
    /// A cursor from its text (as read back from [`RunCursor::as_str`], e.g. in a URL).
    pub fn new(text: impl Into<String>) -> Self {
        RunCursor(text.into())
    }

    /// Its text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The cursor of the backends that order runs by start time then id: `"<ms>:<run id>"`.
    pub fn of_run(info: &RunInfo) -> Self {
        RunCursor(format!("{}:{}", millis(info.started_at), info.run_id))
    }

    /// The start time (ms since the epoch) and run id of a cursor made by
    /// [`RunCursor::of_run`].
    ///
    /// # Errors
    /// [`DistributedError::InvalidCursor`] for any other text.
    pub fn start_and_id(&self) -> Result<(u64, &str), DistributedError> {
        self.0
            .split_once(':')
            .and_then(|(ms, id)| Some((ms.parse().ok()?, id)))
            .ok_or_else(|| DistributedError::InvalidCursor(self.0.clone()))
    }
}

impl std::fmt::Display for RunCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of runs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunPage {
    /// The matching runs, newest first.
    pub runs: Vec<RunInfo>,
    /// Where to continue, when there may be more (`None`: this was the last page).
    pub next: Option<RunCursor>,
}

impl RunPage {
    /// A page of `runs`, continued at `next`.
    pub fn new(runs: Vec<RunInfo>, next: Option<RunCursor>) -> Self {
        RunPage { runs, next }
    }
}

/// Milliseconds since the epoch (0 before it).
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Pages `candidates` through `query`: the default [`AdminBackend::query_runs`].
///
/// # Errors
/// [`DistributedError::InvalidCursor`] or a backend error.
pub async fn page_of<B: AdminBackend + ?Sized>(
    backend: &B,
    query: &RunQuery,
    mut candidates: Vec<RunInfo>,
) -> Result<RunPage, DistributedError> {
    candidates.sort_by_key(|r| std::cmp::Reverse((millis(r.started_at), r.run_id.clone())));
    let after = match &query.after {
        Some(cursor) => Some(cursor.start_and_id()?),
        None => None,
    };
    let mut pager = Pager::new(query);
    for info in candidates {
        if after.is_some_and(|(ms, id)| (millis(info.started_at), info.run_id.as_str()) >= (ms, id))
        {
            continue;
        }
        if let Some(page) = pager.offer(backend, info).await? {
            return Ok(page);
        }
    }
    Ok(pager.last_page())
}

/// Fills one page from candidates offered newest first (in [`RunCursor::of_run`] order):
/// counts what it examined against the budget and remembers where it stopped.
#[derive(Debug)]
pub struct Pager<'q> {
    query: &'q RunQuery,
    runs: Vec<RunInfo>,
    examined: usize,
    last: Option<RunCursor>,
}

impl<'q> Pager<'q> {
    /// An empty page of `query`.
    pub fn new(query: &'q RunQuery) -> Self {
        Pager {
            query,
            runs: Vec::new(),
            examined: 0,
            last: None,
        }
    }

    /// Examines the next candidate; the finished page (continued at the last run examined)
    /// once the page is full or the budget spent and more candidates exist.
    ///
    /// # Errors
    /// A backend error.
    pub async fn offer<B: AdminBackend + ?Sized>(
        &mut self,
        backend: &B,
        info: RunInfo,
    ) -> Result<Option<RunPage>, DistributedError> {
        let spent = self.query.is_filtered() && self.examined >= self.query.scan_budget.max(1);
        if self.runs.len() >= self.query.limit.max(1) || spent {
            return Ok(Some(RunPage::new(
                std::mem::take(&mut self.runs),
                self.last.take(),
            )));
        }
        self.examined += 1;
        self.last = Some(RunCursor::of_run(&info));
        if self.query.matches(backend, &info).await? {
            self.runs.push(info);
        }
        Ok(None)
    }

    /// The page when the candidates ran out: there is no next one.
    pub fn last_page(self) -> RunPage {
        RunPage::new(self.runs, None)
    }
}
