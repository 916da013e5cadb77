//! The dashboard's pages, rendered as HTML on the server.

use std::fmt::Write;
use std::time::SystemTime;

use floxide_core::distributed::{DistributedError, RunMetrics, RunStatus};

use super::AppState;
use crate::render::{duration, rfc3339, timestamp_relative};

/// Follows changes without a reload: on each `change` event (at most one fetch a second), the
/// page fetches itself again and swaps its `<main>` in place; a page whose fresh copy is no
/// longer live (a finished run) stops following.
const LIVE_SCRIPT: &str = "<script>(()=>{const e=new EventSource('/events');let busy=false;\
e.addEventListener('change',()=>{if(busy)return;busy=true;setTimeout(async()=>{try{\
const r=await fetch(location.href,{credentials:'same-origin'});if(r.ok){\
const d=new DOMParser().parseFromString(await r.text(),'text/html');const m=d.querySelector('main');\
if(m){document.querySelector('main').replaceWith(m);document.title=d.title;\
if(m.dataset.live!=='true')e.close();}}}finally{busy=false}},1000)});})();</script>";

/// The run's committed steps per node: count, total, mean and longest duration.
fn node_timings(metrics: &RunMetrics) -> String {
    let mut html = String::from(
        "<h2>Node timings</h2><table id=\"timings\"><tr><th>Node</th><th>Steps</th>\
         <th>Total</th><th>Mean</th><th>Longest</th></tr>",
    );
    for (node, t) in &metrics.per_node {
        let mean = t.total / u32::try_from(t.count.max(1)).unwrap_or(u32::MAX);
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(node),
            t.count,
            duration(t.total),
            duration(mean),
            duration(t.max)
        );
    }
    html.push_str("</table>");
    html
}

/// The page around `body`; a `live` page follows changes (see [`LIVE_SCRIPT`]).
pub(crate) fn page(title: &str, body: &str, live: bool) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · floxide</title>\
         <style>body{{font-family:sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse}}\
         td,th{{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}}\
         .status{{font-weight:bold}}pre{{background:#f6f6f6;padding:.8em;overflow:auto}}\
         form{{display:inline}}nav a{{margin-right:1em}}</style></head>\
         <body><nav><a href=\"/\">Runs</a><a href=\"/workers\">Workers</a><a href=\"/queues\">Queues</a><a href=\"/dead-letters\">Dead letters</a></nav>\
         <main data-live=\"{live}\"><h1>{title}</h1>{body}</main>{script}</body></html>",
        title = escape(title),
        script = if live { LIVE_SCRIPT } else { "" },
    )
}

/// A page with one message (errors, refusals).
pub(crate) fn message(title: &str, detail: &str) -> String {
    page(title, &format!("<p>{}</p>", escape(detail)), false)
}

/// A run's page: status and times, actions, the graph, items, context, output or error.
pub(crate) async fn run(state: &AppState, id: &str) -> Result<String, DistributedError> {
    let b = &state.backend;
    let info = b.run_info(id).await?;
    let items = b.work_items(id).await?;
    let errors = b.errors(id).await?;
    let context = b.load_context(id).await?;
    let now = SystemTime::now();
    let mut body = String::new();
    let _ = write!(
        body,
        "<p>Workflow <b>{}</b> · status <span class=\"status\" id=\"status\">{}</span> · started {}{}</p>",
        escape(&info.workflow),
        info.status,
        escape(&rfc3339(info.started_at)),
        info.finished_at
            .map(|t| format!(" · finished {}", escape(&rfc3339(t))))
            .unwrap_or_default()
    );
    if !state.read_only && !info.status.is_finished() {
        for (action, label) in [
            ("pause", "Pause"),
            ("resume", "Resume"),
            ("cancel", "Cancel"),
        ] {
            body.push_str(&post_form(
                &format!("/runs/{}/{action}", url_segment(id)),
                &state.csrf,
                &[],
                &format!("<button id=\"{action}\">{label}</button>"),
            ));
        }
    }
    if let Some(input) = b.run_input(id).await? {
        let _ = write!(
            body,
            "<h2>Input</h2><pre id=\"input\">{}</pre>",
            escape(&floxide_core::distributed::payload_text(&input))
        );
    }
    if let Some(output) = &info.output {
        let _ = write!(
            body,
            "<h2>Output</h2><pre id=\"output\">{}</pre>",
            escape(&output.to_string())
        );
    }
    if let Some(error) = &info.error {
        let _ = write!(
            body,
            "<h2>Error</h2><pre id=\"error\">{}</pre>",
            escape(error)
        );
    }
    let _ = write!(
        body,
        "<h2>Graph</h2><div id=\"graph\">{}</div>",
        run_graph(state, id)
            .await
            .unwrap_or_else(|e| format!("<p>{}</p>", escape(&e.to_string())))
    );
    let _ = write!(
        body,
        "<h2>Steps</h2>{}",
        match b.step_history(id).await? {
            Some(events) if events.is_empty() && info.status == RunStatus::Completed => {
                "<p id=\"timeline\">No step history was kept for this run: on Redis and \
                 PostgreSQL a routine history (every step leased once and committed) goes when \
                 its run completes, \
                 and a backend whose step history is turned off records none. The node \
                 timings are below.</p>"
                    .to_owned()
            }
            Some(events) => super::timeline::render(&events, now),
            None => "<p id=\"timeline\">This backend keeps no step history.</p>".to_owned(),
        }
    );
    body.push_str(&node_timings(&b.metrics(id).await?));
    body.push_str("<h2>Items</h2><table><tr><th>Item</th><th>Node</th><th>State</th><th>Attempt</th><th>Worker</th></tr>");
    for item in &items {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td></tr>",
            item.item_id,
            escape(&item.node),
            item.status,
            item.attempt,
            escape(item.worker.as_ref().map_or("-", |w| w.0.as_str()))
        );
    }
    body.push_str("</table>");
    if !errors.is_empty() {
        body.push_str("<h2>Errors</h2><table><tr><th>Node</th><th>Attempt</th><th>When</th><th>Error</th></tr>");
        for e in &errors {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&e.node),
                e.attempt,
                escape(&timestamp_relative(e.timestamp, now)),
                escape(&e.error)
            );
        }
        body.push_str("</table>");
    }
    let context_text = String::from_utf8_lossy(&context.bytes);
    let pretty = serde_json::from_str::<serde_json::Value>(&context_text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| context_text.into_owned());
    let _ = write!(
        body,
        "<h2>Context</h2><pre id=\"context\">{}</pre>",
        escape(&pretty)
    );
    Ok(page(
        &format!("Run {id}"),
        &body,
        !info.status.is_finished(),
    ))
}

/// The run drawn as its workflow's graph (SVG), coloured by its items' states.
pub(crate) async fn run_graph(state: &AppState, id: &str) -> Result<String, DistributedError> {
    crate::graphs::run_svg(&*state.backend, id)
        .await?
        .map_err(|workflow| {
            DistributedError::Backend(format!(
                "no registered graph of workflow `{workflow}` (workers and orchestrators register \
             theirs when they start)"
            ))
        })
}

/// A POST form to `action` carrying the page's CSRF token and `fields` (hidden, escaped
/// here), sent by `button` (HTML): every action of the dashboard is one.
pub(crate) fn post_form(
    action: &str,
    csrf: &str,
    fields: &[(&str, String)],
    button: &str,
) -> String {
    let mut form = format!(
        "<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">"
    );
    for (name, value) in fields {
        let _ = write!(
            form,
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            escape(value)
        );
    }
    let _ = write!(form, "{button}</form> ");
    form
}

/// `text` percent-encoded for a URL path segment or query value.
pub(crate) fn url_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `text` safe inside HTML text and attributes.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
