//! gdx-policies: who may do what in GDX.
//!
//! Every HTTP route is decided by casbin against the model and default policy
//! kept as files under `policies/` (embedded in the binary, replaceable by
//! files given at start). Deny by default. Dataset access is decided by casbin
//! too, with a model and default policy of its own and the runtime rules
//! (grants) of the metadata store; see [`data`]. Masks and row filters are
//! compiled into access plans ([`plan`]).

pub mod access;
pub mod adapter;
pub mod data;
pub mod error;
pub mod filter;
pub mod masks;
pub mod plan;
pub mod routes;

pub use access::Access;
pub use adapter::StoreAdapter;
pub use data::{DataAuthorizer, Decision};
pub use error::{Error, Result};
pub use masks::{HashKey, Mask};
pub use plan::{AccessPlan, DatasetPolicy, Denial, compile};
pub use routes::{RouteAuthorizer, Scope};
