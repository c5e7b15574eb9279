//! What a principal may do with a dataset's data, as the catalogue reports it.

use serde::Serialize;

/// A principal's access to a dataset's data, as `GET /api/v1/datasets/{id}` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// The caller may query it.
    Read,
    /// The caller may ask the provider for it (a sharing request).
    Requestable,
    /// Neither.
    None,
}
