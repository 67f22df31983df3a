//! `speedrun serve`: a local web dashboard over the run store. Read-only: it
//! answers GET requests from what the store and the run directories hold, and
//! changes nothing. One thread (a current-thread tokio runtime under axum);
//! each request holds the store's connection only while it queries.
//!
//! Pages: the tracks (`/`), a track (`/track/NAME`: leaderboard, records,
//! frontier, benches, every run with a box to tick for comparison), a run
//! (`/run/ID`: curves, verdict, plugins, manifest; a running run redraws
//! itself from `/api/run/ID`), a comparison of ticked runs
//! (`/compare?runs=1,2`) and a stored bench (`/bench/ID`). Charts are uPlot,
//! installed from npm into `host/dashboard/node_modules` (`npm ci --prefix
//! host/dashboard`); without it the pages say so where the charts would be.

mod charts;
mod compare;
mod pages;

use crate::store::Store;
use anyhow::{Context, Result};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;

/// What `speedrun serve` needs.
pub struct ServeOptions {
    pub store: Store,
    pub addr: SocketAddr,
}

/// A page: its status and its HTML.
pub struct Page {
    pub status: StatusCode,
    pub html: String,
}

impl Page {
    fn ok(html: String) -> Page {
        Page {
            status: StatusCode::OK,
            html,
        }
    }

    fn not_found(html: String) -> Page {
        Page {
            status: StatusCode::NOT_FOUND,
            html,
        }
    }
}

struct App {
    store: Store,
    /// `host/dashboard/`: our script and style, and uPlot under node_modules.
    assets: std::path::PathBuf,
}

/// Serves until the process is stopped; `ready` is told the address bound
/// (port 0 picks a free one).
pub fn serve(o: ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the dashboard's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(o.addr)
            .await
            .with_context(|| format!("listening on {}", o.addr))?;
        ready(listener.local_addr()?);
        let app = Arc::new(App {
            store: o.store,
            assets: crate::track::project_root().join("host/dashboard"),
        });
        axum::serve(listener, router(app))
            .await
            .context("serving the dashboard")
    })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/track/{name}", get(track))
        .route("/run/{id}", get(run))
        .route("/compare", get(compare))
        .route("/bench/{id}", get(bench))
        .route("/api/run/{id}", get(run_json))
        .route("/assets/{file}", get(asset))
        .fallback(|| async {
            respond(Ok(Page::not_found(pages::message(
                "Not found",
                "There is no such page: start from the tracks.",
            ))))
        })
        .with_state(app)
}

/// A page, or the error that stopped it as a page of its own.
fn respond(page: Result<Page>) -> Response {
    match page {
        Ok(p) => (p.status, Html(p.html)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html(pages::message("Error", &format!("{e:#}"))),
        )
            .into_response(),
    }
}

/// A page made off the runtime's thread: the store's calls block (a
/// PostgreSQL client runs a runtime of its own, which may not nest in this one).
async fn page(
    app: Arc<App>,
    make: impl FnOnce(&Store) -> Result<Page> + Send + 'static,
) -> Response {
    let made = tokio::task::spawn_blocking(move || make(&app.store)).await;
    respond(made.unwrap_or_else(|e| Err(anyhow::anyhow!("the page's task failed: {e}"))))
}

async fn index(State(app): State<Arc<App>>) -> Response {
    page(app, pages::index).await
}

async fn track(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    page(app, move |s| pages::track(s, &name)).await
}

async fn run(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    page(app, move |s| pages::run(s, &id)).await
}

async fn compare(State(app): State<Arc<App>>, query: RawQuery) -> Response {
    // `runs=1&runs=2` (the form) or `runs=1,2` (a link): both are lists of ids.
    let ids: Vec<String> = query
        .0
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("runs="))
        .flat_map(|v| v.split("%2C").flat_map(|v| v.split(',')))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect();
    page(app, move |s| compare::compare(s, &ids)).await
}

async fn bench(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    page(app, move |s| compare::bench(s, &id)).await
}

async fn run_json(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let live = tokio::task::spawn_blocking(move || pages::run_live(&app.store, &id)).await;
    match live.unwrap_or_else(|e| Err(anyhow::anyhow!("the request's task failed: {e}"))) {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such run").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
    }
}

async fn asset(State(app): State<Arc<App>>, Path(file): Path<String>) -> Response {
    let (path, kind) = match file.as_str() {
        "dashboard.js" => (app.assets.join("dashboard.js"), "text/javascript"),
        "style.css" => (app.assets.join("style.css"), "text/css"),
        "uPlot.js" => (
            app.assets.join("node_modules/uplot/dist/uPlot.iife.min.js"),
            "text/javascript",
        ),
        "uPlot.css" => (
            app.assets.join("node_modules/uplot/dist/uPlot.min.css"),
            "text/css",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    match std::fs::read(&path) {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind)], bytes).into_response(),
        // dashboard.js tells the reader how to install uPlot when it is absent.
        Err(_) => (
            StatusCode::NOT_FOUND,
            format!("{} is missing", path.display()),
        )
            .into_response(),
    }
}
