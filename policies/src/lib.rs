//! gdx-policies: who may do what in GDX.
//!
//! Every HTTP route is decided by casbin against the model and default policy
//! kept as files under `policies/` (embedded in the binary, replaceable by
//! files given at start). Deny by default. Dataset access (sharing types,
//! grants, masks, row filters) builds on the same principal and department
//! facts; see [`access`].

pub mod access;
pub mod error;
pub mod filter;
pub mod masks;
pub mod plan;
pub mod routes;

pub use access::{Access, dataset_access};
pub use error::{Error, Result};
pub use masks::{HashKey, Mask};
pub use plan::{AccessPlan, DatasetPolicy, Denial, Grant, plan};
pub use routes::{RouteAuthorizer, Scope};
