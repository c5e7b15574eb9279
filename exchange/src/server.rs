//! `App`: the running service, started by `gdx serve` and by tests on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use gdx_catalog::{Catalog, SqliteStore};
use gdx_policies::{DataAuthorizer, RouteAuthorizer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Name of the administrator token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Name of the lock file that keeps two processes off one data directory.
pub const LOCK_FILE: &str = "gdx.lock";
/// How often the server looks for data rules changed by another process
/// (and ends expired grants): such a change takes effect within this.
const DATA_RULES_POLL: std::time::Duration = std::time::Duration::from_millis(500);
/// Name of the metadata database in the data directory.
pub const META_DB: &str = "meta.db";
/// The record index (per data file, rebuilt from the lake when missing).
pub const INDEX_DIR: &str = "index";

/// How long a client may take over the parts of a request.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// To send a request's head; also how long an idle keep-alive connection stays open.
    header: std::time::Duration,
    /// The longest a request body may go without a byte.
    body: std::time::Duration,
}

/// Serves HTTP/1.1 on every connection of `listener` until `shutdown`, then
/// lets requests in flight finish.
///
/// Each connection carries its [`crate::tls::Peer`] into its requests (as
/// `ConnectInfo`), reads request heads within `timeouts.header` (a slow or
/// silent client is disconnected) and bodies under `timeouts.body`.
async fn serve(
    mut listener: crate::tls::Listener,
    router: axum::Router,
    timeouts: Timeouts,
    shutdown: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let (signal_tx, signal_rx) = tokio::sync::watch::channel(());
    let (close_tx, close_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let body_timeout = timeouts.body;
        let router = router.clone();
        let service = tower::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
            let (router, peer) = (router.clone(), peer.clone());
            async move {
                let (mut parts, body) = req.into_parts();
                parts.extensions.insert(ConnectInfo(peer));
                let body = axum::body::Body::new(tower_http::timeout::TimeoutBody::new(body_timeout, body));
                // The handler reads the body through `feed`; what it leaves
                // unread is read here after it answers (see `drain`).
                let data = Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
                let feed = futures::stream::unfold(data.clone(), |s| async move {
                    let next = s.lock().await.next().await;
                    next.map(|chunk| (chunk, s))
                });
                let request = axum::http::Request::from_parts(parts, axum::body::Body::from_stream(feed));
                let response = router.oneshot(request).await;
                drain(&data).await;
                response
            }
        });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let mut signal_rx = signal_rx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(timeouts.header).keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    served = conn.as_mut() => {
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = signal_rx.changed(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close_rx);
        });
    }
    drop(listener);
    drop(close_rx);
    let _ = signal_tx.send(());
    close_tx.closed().await;
    Ok(())
}

/// Reads what a handler left of its request body, up to [`DRAIN_BYTES`]
/// within [`DRAIN_TIME`], before the answer goes out. A refusal is often
/// answered before the body is read (a wrong credential, a wrong media
/// type); closing the connection while the client is still sending resets
/// it, and the client sees the reset instead of the answer.
async fn drain(data: &tokio::sync::Mutex<axum::body::BodyDataStream>) {
    let Ok(mut rest) = data.try_lock() else { return };
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = rest.next().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// Bytes of a request body read after its answer, at most.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;

/// Time spent reading the rest of a request body after its answer, at most.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A running server.
#[derive(Debug)]
pub struct App {
    addr: SocketAddr,
    admin_token_file: Option<PathBuf>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    maintenance: Option<JoinHandle<()>>,
    watcher: JoinHandle<()>,
    push: Vec<JoinHandle<()>>,
    warm: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    audit: crate::audit::AuditLog,
    tls: Option<Arc<crate::tls::Reloader>>,
    reload: Option<JoinHandle<()>>,
    _lock: std::fs::File,
}

/// How often the latencies recorded since the last time are folded into the
/// `/metrics` distributions. Until then the recorder keeps each observation
/// on its own (about 20 bytes a request): a server nobody scrapes grew by
/// some 70 MB an hour per 1,000 requests a second.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Folds the recorded latencies into their distributions every
/// [`METRICS_UPKEEP`] (a scrape of `/metrics` does it too).
fn metrics_upkeep(handle: PrometheusHandle) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// The process-wide Prometheus recorder (metrics macros use one global recorder).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Takes the data directory's lock, or fails if another process holds it.
pub fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Io { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Io { path, source }),
    }
}

/// Writes a file only its owner may read (mode 0600): a new one, or with
/// `replace` over an existing one.
pub fn write_private_file(path: &Path, contents: &str, replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    if replace {
        options.write(true).create(true).truncate(true);
    } else {
        options.write(true).create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

impl App {
    /// Opens the data directory, bootstraps the administrator and starts serving.
    pub async fn start(config: Config) -> Result<App> {
        config.check()?;
        // Certificate files are read first: a wrong one stops the start before anything is opened.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(crate::tls::Reloader::new(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.client_ca.clone(),
            })?)),
            _ => None,
        };
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        let lock = lock_data_dir(&dir)?;
        let secret_path = config.secret_key_file.clone().unwrap_or_else(|| crate::secret::default_path(None, &dir));
        let secret = crate::secret::load_or_create(&secret_path, &dir)?;
        let store = SqliteStore::open(&dir.join(META_DB))?;
        let audit = crate::audit::AuditLog::open(&dir.join(crate::backup::AUDIT_DB), &secret)?;
        let catalog = Catalog::new(Arc::new(store));

        let (admin_secret, admin_token_file) = match &config.admin_token {
            Some(t) => (t.clone(), None),
            None => {
                let path = dir.join(ADMIN_TOKEN_FILE);
                if path.exists() {
                    let text =
                        std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
                    if text.trim().is_empty() {
                        return Err(Error::Config { message: format!("{} is empty", path.display()) });
                    }
                    (text.trim().to_string(), Some(path))
                } else {
                    let secret = gdx_catalog::token::new_secret();
                    write_private_file(&path, &format!("{secret}\n"), false)
                        .map_err(|source| Error::Io { path: path.clone(), source })?;
                    tracing::info!(file = %path.display(), "created the administrator token");
                    (secret, Some(path))
                }
            }
        };
        catalog.bootstrap_admin(&admin_secret).await?;
        crate::ingest::clean_tmp(&dir.join(crate::api::versions::TMP_DIR));
        let lake = Arc::new(gdx_catalog::lake::Lake::new(dir.join(crate::backup::LAKE_DIR)));
        let recovered = crate::ingest::catch_up(&catalog, &lake).await?;
        if recovered > 0 {
            tracing::warn!(recovered, "the catalogue caught up with the Delta log");
        }

        let routes = match (&config.route_model, &config.route_policy) {
            (None, None) => RouteAuthorizer::shipped().await?,
            (model, policy) => {
                let model = model.clone().unwrap_or_else(|| PathBuf::from("policies/route_model.conf"));
                let policy = policy.clone().unwrap_or_else(|| PathBuf::from("policies/route_policy.csv"));
                RouteAuthorizer::from_files(&model, &policy).await?
            }
        };
        let data = Arc::new(match (&config.data_model, &config.data_policy) {
            (None, None) => DataAuthorizer::shipped(catalog.store().clone()).await?,
            (model, policy) => {
                let model = model.clone().unwrap_or_else(|| PathBuf::from("policies/data_model.conf"));
                let policy = policy.clone().unwrap_or_else(|| PathBuf::from("policies/data_policy.csv"));
                DataAuthorizer::from_files(&model, &policy, catalog.store().clone()).await?
            }
        });
        let calendar = gdx_catalog::workdays::Calendar::with_files(&config.calendar_files)?;
        let this_year = chrono::Datelike::year(&chrono::Utc::now());
        for year in [this_year, this_year + 1] {
            if !calendar.years().contains(&year) {
                tracing::warn!(
                    year,
                    "no holiday arrangement for {year}: deadlines in it count weekends only until one is added (calendar_files)"
                );
            }
        }
        let records = Arc::new(gdx_catalog::lake::records::RecordIndex::new(dir.join(INDEX_DIR)));
        let push_store = crate::push::PushStore::open(&dir.join(crate::push::PUSH_DB))
            .map_err(|e| Error::Config { message: e.to_string() })?;
        let state = AppState::new(crate::state::Shared {
            catalog,
            lake,
            routes: Arc::new(routes),
            data,
            config: Arc::new(config.clone()),
            metrics: metrics_handle(),
            secret: Arc::new(secret),
            calendar: Arc::new(calendar),
            audit: audit.clone(),
            records,
            lookups: Arc::default(),
            push: Arc::new(crate::push::Push::new(push_store)),
            limits: Arc::new(crate::limits::Limiter::new(config.limits.clone())),
        });
        let tcp = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind { addr: config.listen, source })?;
        let listener = crate::tls::Listener::new(tcp, tls.clone())
            .map_err(|source| Error::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr();
        // Started once nothing can fail any more, so that a refused start
        // leaves no task behind.
        let watcher = tokio::spawn(state.data.clone().watch(DATA_RULES_POLL));
        let maintenance = (config.maintenance_interval_hours > 0).then(|| {
            crate::ingest::schedule_maintenance(
                state.catalog.clone(),
                state.lake.clone(),
                state.records.clone(),
                std::time::Duration::from_secs(config.maintenance_interval_hours * 3600),
                std::time::Duration::from_secs(config.vacuum_retention_hours * 3600),
            )
        });
        let push = vec![
            tokio::spawn(crate::push::eval::evaluator(state.clone())),
            tokio::spawn(crate::push::deliver::deliverer(state.clone())),
        ];
        let warm = crate::ingest::warm_record_index(state.catalog.clone(), state.lake.clone(), state.records.clone());
        let upkeep = metrics_upkeep(state.metrics.clone());
        let reload = tls.clone().map(|t| tokio::spawn(t.watch(crate::tls::RELOAD_POLL)));
        let (tx, rx) = oneshot::channel::<()>();
        let timeouts = Timeouts {
            header: std::time::Duration::from_secs(config.header_timeout_secs),
            body: std::time::Duration::from_secs(config.body_timeout_secs),
        };
        let task = tokio::spawn(serve(listener, crate::api::router(state), timeouts, rx));
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, data_dir = %dir.display(), "gdx serving");
        Ok(App {
            addr,
            tls,
            admin_token_file,
            shutdown: Some(tx),
            task,
            maintenance,
            watcher,
            reload,
            push,
            warm,
            upkeep,
            audit,
            _lock: lock,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, or `https://<addr>` when serving TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls.is_some() { "https" } else { "http" }, self.addr)
    }

    /// Reads the TLS files again now, as SIGHUP does; `Ok(false)` when not serving TLS.
    pub fn reload_tls(&self) -> Result<bool> {
        match &self.tls {
            Some(t) => t.reload(true),
            None => Ok(false),
        }
    }

    /// The file holding the administrator token, when it was not configured.
    pub fn admin_token_file(&self) -> Option<&Path> {
        self.admin_token_file.as_deref()
    }

    /// Stops accepting, finishes in-flight requests and releases the data directory.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(m) = self.maintenance.take() {
            m.abort();
        }
        self.watcher.abort();
        self.warm.abort();
        self.upkeep.abort();
        if let Some(r) = self.reload.take() {
            r.abort();
        }
        for task in self.push.drain(..) {
            task.abort();
        }
        let served = match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(Error::Io { path: PathBuf::from("<listener>"), source }),
            Err(e) => Err(Error::Config { message: format!("server task failed: {e}") }),
        };
        // What is queued for the audit log is written before the process ends.
        let audit = self.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.close()).await;
        served
    }

    /// Serves until Ctrl-C or SIGTERM, then stops gracefully.
    pub async fn run_until_signal(self) -> Result<()> {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        self.stop().await
    }
}
