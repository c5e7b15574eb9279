//! The state every handler shares.

use std::sync::Arc;

use gdx_catalog::Catalog;
use gdx_catalog::lake::Lake;
use gdx_policies::{DataAuthorizer, RouteAuthorizer};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::secret::PlatformSecret;

/// Shared state of the HTTP service: one reference count to clone, however
/// many parts it has (axum clones it for every request and middleware).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state holding `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// The catalogue over the metadata store.
    pub catalog: Catalog,
    /// The Delta lake.
    pub lake: Arc<Lake>,
    /// Route decisions.
    pub routes: Arc<RouteAuthorizer>,
    /// Data access decisions and their cached plans.
    pub data: Arc<DataAuthorizer>,
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The platform secret (keyed-hash masks, audit checkpoints).
    pub secret: Arc<PlatformSecret>,
    /// Working days and public holidays, for deadlines.
    pub calendar: Arc<gdx_catalog::workdays::Calendar>,
    /// The audit log.
    pub audit: crate::audit::AuditLog,
    /// The record index of lookups.
    pub records: Arc<gdx_catalog::lake::records::RecordIndex>,
    /// Compiled lookup governance per caller and dataset.
    pub lookups: Arc<crate::api::records::LookupPlans>,
    /// Push rules, their state and outbox.
    pub push: Arc<crate::push::Push>,
    /// Per-principal request rates, concurrent queries and subject counts.
    pub limits: Arc<crate::limits::Limiter>,
}
