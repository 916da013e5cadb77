//! `floxide ui`: the dashboard, served by the tool itself (no assets to install, works
//! offline). Pages are rendered on the server as HTML; a run's page draws the run as its
//! workflow's graph and reloads itself when the backend reports a change (server-sent events
//! on `/events`).
//!
//! Safety: bound to a loopback address by default; any other address needs a token (`--token`
//! or `FLOXIDE_UI_TOKEN`), given once as `?token=…` (kept in a cookie) or as a bearer token.
//! Actions are POSTs that carry the page's CSRF token; `--read-only` hides and refuses them.

mod history;
mod operate;
mod pages;
mod runs;
mod timeline;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use floxide_core::distributed::{Backend, RunAction};
use serde::Deserialize;

use crate::commands::CliError;

/// How the dashboard is served.
#[derive(Debug, Clone)]
pub struct UiOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The token a client must present (required unless `listen` is a loopback address).
    pub token: Option<String>,
    /// Hide and refuse every action.
    pub read_only: bool,
}

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) read_only: bool,
    token: Option<String>,
    /// The CSRF token of this server's pages (forms carry it back).
    pub(crate) csrf: String,
    /// The last minutes' readings of workers and queues.
    pub(crate) history: history::History,
}

/// Serves the dashboard until the process is stopped.
///
/// # Errors
/// [`CliError::UiUnsafe`] for a non-loopback address without a token, or the socket's error.
pub async fn serve(backend: Arc<dyn Backend>, options: UiOptions) -> Result<(), CliError> {
    if !options.listen.ip().is_loopback() && options.token.is_none() {
        return Err(CliError::UiUnsafe(options.listen));
    }
    let state = app_state(backend, options.token, options.read_only);
    tokio::spawn(keep_history(state.clone()));
    let app = routes(state);
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    eprintln!("floxide ui: http://{}/", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Reads the workers and the queues of every registered workflow every few seconds.
async fn keep_history(state: Arc<AppState>) {
    loop {
        let workflows = registered_workflows(&*state.backend)
            .await
            .unwrap_or_default();
        // A failed reading leaves a gap; the next one comes all the same.
        let _ = state.history.sample(&*state.backend, &workflows).await;
        tokio::time::sleep(history::EVERY).await;
    }
}

/// The names of the registered workflows, sorted.
pub(crate) async fn registered_workflows(
    backend: &dyn Backend,
) -> Result<Vec<String>, floxide_core::distributed::DistributedError> {
    let mut workflows: Vec<String> = backend
        .graphs()
        .await?
        .into_iter()
        .map(|g| g.graph.workflow)
        .collect();
    workflows.sort();
    workflows.dedup();
    Ok(workflows)
}

/// What the handlers share, for `backend`.
pub(crate) fn app_state(
    backend: Arc<dyn Backend>,
    token: Option<String>,
    read_only: bool,
) -> Arc<AppState> {
    Arc::new(AppState {
        backend,
        read_only,
        token,
        csrf: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        history: history::History::default(),
    })
}

/// The dashboard's routes over `backend` (without the history of rates).
#[cfg(test)]
pub(crate) fn router(backend: Arc<dyn Backend>, token: Option<String>, read_only: bool) -> Router {
    routes(app_state(backend, token, read_only))
}

/// The dashboard's routes.
pub(crate) fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(runs::runs_page))
        .route("/bulk", get(runs::bulk_preview).post(runs::bulk_apply))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/graph.svg", get(run_svg))
        .route("/runs/{id}/{action}", post(run_action))
        .route("/workers", get(operate::workers))
        .route("/queues", get(operate::queues))
        .route("/dead-letters", get(operate::dead_letters))
        .route("/dead-letters/{action}", post(operate::letter_action))
        .route("/events", get(events))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Lets a request through when no token is set, or when it carries the token (query, cookie
/// or bearer header); a query token is kept in a cookie for the next requests.
async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(token) = state.token.as_deref() else {
        return next.run(request).await;
    };
    let from_query = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .is_some_and(|t| t == token);
    let from_header = request.headers().get_all(header::COOKIE).iter().any(|c| {
        c.to_str().is_ok_and(|c| {
            c.split(';')
                .any(|kv| kv.trim() == format!("floxide_token={token}"))
        })
    }) || request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"));
    if !from_query && !from_header {
        return (
            StatusCode::UNAUTHORIZED,
            Html(pages::message(
                "Unauthorized",
                "This dashboard needs its token: open it with ?token=… once.",
            )),
        )
            .into_response();
    }
    let mut response = next.run(request).await;
    if from_query {
        if let Ok(cookie) =
            format!("floxide_token={token}; HttpOnly; SameSite=Strict; Path=/").parse()
        {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
    }
    response
}

/// A page that failed: a clear page, never a backtrace.
pub(crate) fn failure(status: StatusCode, title: &str, detail: &str) -> Response {
    (status, Html(pages::message(title, detail))).into_response()
}

async fn run_page(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match pages::run(&state, &id).await {
        Ok(html) => Html(html).into_response(),
        Err(e) => error_page(&id, e),
    }
}

async fn run_svg(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match pages::run_graph(&state, &id).await {
        Ok(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Err(e) => error_page(&id, e),
    }
}

/// An unknown run is a 404 page; anything else the backend's error.
fn error_page(id: &str, e: floxide_core::distributed::DistributedError) -> Response {
    match e {
        floxide_core::distributed::DistributedError::UnknownRun(_) => failure(
            StatusCode::NOT_FOUND,
            "Unknown run",
            &format!("there is no run `{id}` (it may have passed its retention)"),
        ),
        e => failure(StatusCode::BAD_GATEWAY, "Backend error", &e.to_string()),
    }
}

/// An action's form.
#[derive(Debug, Deserialize)]
struct ActionForm {
    csrf: String,
}

/// A form that carries this server's CSRF token.
pub(crate) trait CarriesCsrf {
    fn csrf(&self) -> &str;
}

impl CarriesCsrf for ActionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Why a request cannot be served, shown as a clear page (small, unlike a [`Response`]).
#[derive(Debug)]
pub(crate) struct Problem(
    pub(crate) StatusCode,
    pub(crate) &'static str,
    pub(crate) String,
);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        failure(self.0, self.1, &self.2)
    }
}

/// The form of an action, once the dashboard allows actions and the form came from its own
/// page (its CSRF token); else why not.
pub(crate) fn checked_form<F: CarriesCsrf>(
    state: &AppState,
    form: Result<Form<F>, FormRejection>,
) -> Result<F, Problem> {
    if state.read_only {
        return Err(Problem(
            StatusCode::FORBIDDEN,
            "Read-only",
            "this dashboard is read-only".into(),
        ));
    }
    match form {
        Ok(Form(form)) if form.csrf() == state.csrf => Ok(form),
        _ => Err(Problem(
            StatusCode::FORBIDDEN,
            "Refused",
            "the request did not come from this dashboard's page (CSRF token missing or wrong)"
                .into(),
        )),
    }
}

async fn run_action(
    State(state): State<Arc<AppState>>,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    if let Err(refused) = checked_form(&state, form) {
        return refused.into_response();
    }
    let action = match action.as_str() {
        "cancel" => RunAction::Cancel,
        "pause" => RunAction::Pause,
        "resume" => RunAction::Resume,
        other => {
            return failure(
                StatusCode::NOT_FOUND,
                "Unknown action",
                &format!("`{other}` is not an action: cancel, pause or resume"),
            )
        }
    };
    match state.backend.control(&id, action).await {
        Ok(_) => Redirect::to(&format!("/runs/{}", pages::url_segment(&id))).into_response(),
        Err(floxide_core::distributed::DistributedError::UnknownRun(_)) => error_page(
            &id,
            floxide_core::distributed::DistributedError::UnknownRun(id.clone()),
        ),
        Err(e) => failure(StatusCode::CONFLICT, "Refused", &e.to_string()),
    }
}

/// Server-sent events: `change` whenever a run of the deployment changed (pages reload what
/// they show), and a keep-alive comment every 15 s.
async fn events(
    State(state): State<Arc<AppState>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let watch = state.backend.watch_runs();
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        watch.changed(Duration::from_secs(3600)).await;
        // At most two events a second, however busy the deployment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some((Ok(Event::default().event("change").data("runs")), watch))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests;
