//! `astra-worker serve`: the HTTP half, on axum. Astra's webhooks in (`/webhooks/astra`, signed, into the
//! inbox, processed in the background), and the fintech's backend served in any language: the guard, holds,
//! access tokens, the authorization-code exchange and grant import under `/v1` (a bearer API key), with
//! `/healthz`, `/readyz`, `/metrics` and `/openapi.json`. It also delivers the outbox in the background. Every route is registered from one table
//! ([`routes::ROUTES`]) that also writes the OpenAPI document, so the two cannot drift.

mod api;
mod http;
mod openapi;
mod routes;

use std::{io::ErrorKind, net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use secrecy::SecretString;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

pub use http::RouteMetrics;

use crate::{
    app::{Services, Worker},
    failure::Failure,
    inbox, secrets,
};

/// What every request handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) worker: Arc<Worker>,
    /// The Astra client, keyring and webhook secret, built (and checked against the store) at start.
    pub(crate) services: Arc<Services>,
    pub(crate) api_key: Arc<SecretString>,
    pub(crate) metrics: Arc<RouteMetrics>,
    /// Wakes the inbox processor when a webhook was accepted here.
    pub(crate) wake: Arc<Notify>,
    /// Work that runs to its end though its caller went away (a refresh, a code exchange), waited for at
    /// shutdown within the grace period.
    pub(crate) to_the_end: tokio_util::task::TaskTracker,
}

/// How often the inbox is looked at without a wake-up (retries, webhooks another process accepted).
const INBOX_EVERY: Duration = Duration::from_secs(1);

/// Serves on `listen` until the worker's shutdown is triggered; then stops accepting, lets in-flight requests
/// and the inbox pass finish within `runner.grace_period`, and returns.
pub async fn serve(worker: Arc<Worker>, listen: SocketAddr) -> anyhow::Result<()> {
    let api_key = secrets::require("ASTRA_WORKER_API_KEY")?;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| match e.kind() {
        // Another process holds the port (often the instance being replaced): try again later (75).
        ErrorKind::AddrInUse => Failure::Unavailable(format!("listening on {listen}: {e}")).into(),
        // An address not of this host, or a port this user may not open: the configuration (78).
        ErrorKind::AddrNotAvailable | ErrorKind::PermissionDenied => {
            Failure::config(format!("listening on {listen}: {e}"))
        }
        _ => anyhow::Error::from(e).context(format!("listening on {listen}")),
    })?;
    serve_on(worker, listener, api_key).await
}

/// [`serve`] on a listener already bound, with the API key given (tests bind port 0 and read the address).
pub async fn serve_on(
    worker: Arc<Worker>,
    listener: tokio::net::TcpListener,
    api_key: SecretString,
) -> anyhow::Result<()> {
    // The Astra client, keyring and webhook secret are needed for every route but the probes: refuse to
    // start without them (configuration, 78) rather than fail each request.
    let services = worker.checked_services().await?;
    let state = AppState {
        worker: worker.clone(),
        services,
        api_key: Arc::new(api_key),
        metrics: Arc::new(RouteMetrics::default()),
        wake: Arc::new(Notify::new()),
        to_the_end: tokio_util::task::TaskTracker::new(),
    };
    let to_the_end = state.to_the_end.clone();
    let inbox = tokio::spawn(inbox::process::run(worker.clone(), state.wake.clone(), INBOX_EVERY));
    crate::jobs::deliver_outbox_in_background(worker.clone());
    let addr = listener.local_addr()?;
    info!(listen = %addr, "serving");
    let app = routes::router(state);
    // One grace period from the signal for everything still running: the requests in flight, the work their
    // callers left (see `api::to_the_end`) and the inbox pass (a unit's stop timeout is the grace plus 10 s).
    let grace = worker.settings.runner.grace_period;
    let cut = tokio_util::sync::CancellationToken::new();
    let connections = accept(&worker, listener, app, &cut).await;
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, connections.shutdown()).await.is_err() {
        warn!(
            grace_secs = grace.as_secs(),
            "connections still open after the grace period (requests in flight, or clients that have not sent a \
             whole request); closing them"
        );
    }
    cut.cancel();
    to_the_end.close();
    if tokio::time::timeout_at(deadline, to_the_end.wait()).await.is_err() {
        warn!("a refresh or code exchange whose caller went away did not finish within the grace period");
    }
    if tokio::time::timeout_at(deadline, inbox).await.is_err() {
        warn!("the webhook inbox pass did not finish within the grace period; its webhooks are taken again later");
    }
    info!("stopped serving");
    Ok(())
}

/// Serves `app` on each connection `listener` accepts, in HTTP/1.1 only, until the worker's shutdown; then stops
/// accepting and returns the open connections, whose `shutdown` tells each to close after the request it is
/// answering and waits for them; `cut` closes those still open. A request's head must arrive within
/// `[service].header_timeout`, and an idle kept-alive connection is closed then too (axum's own server cannot be
/// given a timer, so it waited for ever).
async fn accept(
    worker: &Worker,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    cut: &tokio_util::sync::CancellationToken,
) -> GracefulShutdown {
    let connections = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(worker.settings.service.header_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // The peer gave up between its connect and our accept: nothing to do.
                Err(e) if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
                ) => continue,
                // Out of file descriptors, say: wait rather than spin.
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed; trying again in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = worker.shutdown.triggered() => break,
        };
        let conn =
            connections.watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())));
        let cut = cut.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    debug!(error = %e, "a connection ended with an error");
                },
                () = cut.cancelled() => {}
            }
        });
    }
    connections
}
