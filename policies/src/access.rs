//! What a principal may do with a dataset's data, as far as the catalogue shows it.

use gdx_catalog::{Dataset, DatasetStatus, Principal, Role, SharingType};
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

/// The access `principal` has to `dataset` by its sharing type and roles.
///
/// The provider department's stewards, analysts and services read their own
/// datasets; `unconditional` datasets are read by analysts and services of
/// every department; `conditional` ones need a grant, so they are requestable;
/// `none` stays with the provider. Administrators and auditors read no data by
/// virtue of their role, and a retired dataset is read by its provider only.
pub fn dataset_access(principal: &Principal, dataset: &Dataset) -> Access {
    let own = principal.department.as_deref() == Some(dataset.department.as_str());
    let consumer = principal.has_role(Role::Analyst) || principal.has_role(Role::Service);
    if own && (consumer || principal.has_role(Role::Steward)) {
        return Access::Read;
    }
    if !consumer || dataset.status == DatasetStatus::Retired {
        return Access::None;
    }
    match dataset.sharing {
        SharingType::Unconditional => Access::Read,
        SharingType::Conditional => Access::Requestable,
        SharingType::None => Access::None,
    }
}
