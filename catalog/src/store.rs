//! The metadata store: where departments, principals, tokens, datasets and
//! versions live.
//!
//! Callers use the [`MetaStore`] trait only, so another backend (PostgreSQL,
//! for several `gdx serve` nodes) can be added beside [`crate::sqlite`]
//! without touching them. Methods are async because a networked backend
//! needs them to be; the SQLite backend runs its work on blocking threads.
//! The store stores and finds: validation and authorisation happen above it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::model::*;

/// SHA-256 of a bearer token: what the store keeps instead of the token.
pub type TokenHash = [u8; 32];

/// Storage of the catalogue's objects.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Inserts a department; `Conflict` on a taken id or org code, `Validation` on an unknown parent.
    async fn create_department(&self, department: Department) -> Result<Department>;
    /// One department.
    async fn department(&self, id: &str) -> Result<Department>;
    /// Departments ordered by id.
    async fn list_departments(&self, page: PageRequest) -> Result<Page<Department>>;

    /// Inserts a principal with its first token.
    async fn create_principal(&self, principal: Principal, token: NewToken) -> Result<(Principal, TokenInfo)>;
    /// One principal.
    async fn principal(&self, id: &str) -> Result<Principal>;
    /// Principals ordered by id, optionally of one department.
    async fn list_principals(&self, department: Option<String>, page: PageRequest) -> Result<Page<Principal>>;
    /// Changes roles and/or the disabled flag.
    async fn update_principal(&self, id: &str, roles: Option<Vec<Role>>, disabled: Option<bool>) -> Result<Principal>;
    /// Makes sure the bootstrap administrator exists; with `token`, (re)places its configured token.
    async fn ensure_admin(&self, admin: Principal, token: Option<NewToken>) -> Result<Principal>;

    /// Adds a token to a principal.
    async fn create_token(&self, token: NewToken) -> Result<TokenInfo>;
    /// One token's metadata.
    async fn token(&self, id: &str) -> Result<TokenInfo>;
    /// Marks a token revoked (idempotent).
    async fn revoke_token(&self, id: &str) -> Result<TokenInfo>;
    /// The tokens of a principal.
    async fn list_tokens(&self, principal: &str) -> Result<Vec<TokenInfo>>;
    /// The principal and token behind a token hash, if any (revocation and expiry are the caller's to check).
    async fn authenticate(&self, hash: TokenHash) -> Result<Option<(Principal, TokenInfo)>>;

    /// Inserts a dataset; `Conflict` on a taken id or resource code.
    async fn create_dataset(&self, dataset: Dataset) -> Result<Dataset>;
    /// One dataset.
    async fn dataset(&self, id: &str) -> Result<Dataset>;
    /// Replaces a dataset's metadata (not its versions); `Conflict` on a taken resource code.
    async fn update_dataset(&self, dataset: Dataset) -> Result<Dataset>;
    /// Datasets matching the query: by relevance when it has text, else by id.
    async fn search_datasets(&self, query: DatasetQuery, page: PageRequest) -> Result<Page<Dataset>>;
    /// Versions of a dataset, newest first.
    async fn versions(&self, dataset: &str, page: PageRequest) -> Result<Page<Version>>;
    /// Records a committed version and makes it current if it is the newest; `false` if it was already recorded.
    async fn record_version(&self, dataset: &str, version: Version) -> Result<bool>;
    /// One version of a dataset.
    async fn version(&self, dataset: &str, version: i64) -> Result<Version>;
    /// The version a push with this idempotency key committed, if any.
    async fn version_by_idempotency_key(&self, dataset: &str, key: &str) -> Result<Option<Version>>;
    /// The newest Delta version the catalogue knows of for a dataset.
    async fn last_delta_version(&self, dataset: &str) -> Result<Option<i64>>;

    /// A dataset's policy document, if one was set (`NotFound` for an unknown dataset).
    async fn dataset_policy(&self, dataset: &str) -> Result<Option<StoredPolicy>>;
    /// Sets a dataset's policy document (already validated) and moves the policy epoch on.
    async fn set_dataset_policy(&self, dataset: &str, doc: serde_json::Value, by: &str) -> Result<StoredPolicy>;
    /// A counter that moves on with every policy change (policies, grants,
    /// runtime casbin rules): access plans are cached under it.
    async fn policy_epoch(&self) -> Result<i64>;
    /// Every dataset's policy document.
    async fn dataset_policies(&self) -> Result<Vec<(String, StoredPolicy)>>;

    /// The runtime casbin rules, in the order they were added.
    async fn casbin_rules(&self) -> Result<Vec<CasbinRule>>;
    /// Adds rules (those already present are left as they are); `true` if any was new.
    async fn add_casbin_rules(&self, rules: Vec<CasbinRule>) -> Result<bool>;
    /// Removes rules; `true` if any was there.
    async fn remove_casbin_rules(&self, rules: Vec<CasbinRule>) -> Result<bool>;
    /// Removes the rules of `ptype` whose values from `field_index` on equal
    /// `values` (an empty value matches anything); `true` if any was removed.
    async fn remove_filtered_casbin_rules(&self, ptype: &str, field_index: usize, values: Vec<String>) -> Result<bool>;
    /// Replaces every runtime rule.
    async fn replace_casbin_rules(&self, rules: Vec<CasbinRule>) -> Result<()>;

    /// Inserts a grant and, if it is in force, its casbin link, in one transaction;
    /// `NotFound` for an unknown dataset or department, `Conflict` on a taken id.
    async fn create_grant(&self, grant: Grant) -> Result<Grant>;
    /// One grant.
    async fn grant(&self, id: &str) -> Result<Grant>;
    /// Grants, newest first, optionally of one dataset and/or department.
    async fn grants(&self, dataset: Option<String>, department: Option<String>) -> Result<Vec<Grant>>;
    /// Revokes a grant at `at` (idempotent); its casbin link goes when no other
    /// grant of the same dataset to the same department is in force.
    async fn revoke_grant(&self, id: &str, at: DateTime<Utc>) -> Result<Grant>;
    /// Removes the casbin links of grants that expired by `now`; the number removed.
    async fn expire_grants(&self, now: DateTime<Utc>) -> Result<usize>;

    /// Inserts a sharing request; `NotFound` for an unknown dataset or department, `Conflict` on a taken id.
    async fn create_request(&self, request: SharingRequest) -> Result<SharingRequest>;
    /// One sharing request.
    async fn request(&self, id: &str) -> Result<SharingRequest>;
    /// Sharing requests, newest first.
    async fn list_requests(&self, query: WorkQuery, page: PageRequest) -> Result<Page<SharingRequest>>;
    /// Stores the approved state of a pending request and inserts its grant
    /// (with the casbin link) in one transaction; `Conflict` when the request
    /// was answered already (nothing is written then).
    async fn approve_request(&self, request: SharingRequest, grant: Grant) -> Result<SharingRequest>;
    /// Stores the rejected state of a pending request; `Conflict` when it was answered already.
    async fn reject_request(&self, request: SharingRequest) -> Result<SharingRequest>;

    /// Inserts a data-quality feedback.
    async fn create_feedback(&self, feedback: Feedback) -> Result<Feedback>;
    /// One feedback.
    async fn feedback(&self, id: &str) -> Result<Feedback>;
    /// Feedback, newest first.
    async fn list_feedback(&self, query: WorkQuery, page: PageRequest) -> Result<Page<Feedback>>;
    /// Stores the resolved state of an open feedback; `Conflict` when it was resolved already.
    async fn resolve_feedback(&self, feedback: Feedback) -> Result<Feedback>;
}

/// A token to store: its id, owner, hash and expiry.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Token id.
    pub id: String,
    /// Owner.
    pub principal: String,
    /// SHA-256 of the secret.
    pub hash: TokenHash,
    /// Optional expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// The client certificate it stands for (`sha256:<hex>` or `subject:<CN>`), if not a bearer secret.
    pub certificate: Option<String>,
}

/// A dataset's policy as stored: the document the API took, and who set it when.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    /// `{"masks": [...], "row_filters": [...]}`.
    pub doc: serde_json::Value,
    /// When it was set.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Who set it.
    pub updated_by: String,
}
