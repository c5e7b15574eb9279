//! The data authoriser: may a principal read a dataset, and what does it see?
//!
//! casbin decides whether a principal may read a dataset, with the model and
//! default policy shipped under `policies/` (`data_model.conf`,
//! `data_policy.csv`) and the runtime rules of the metadata store (a grant in
//! force is the link `g2, <department>, <dataset>`), loaded through
//! [`StoreAdapter`]. What the reader then sees is compiled by
//! [`crate::plan::compile`] from the dataset's policy and the grant.
//!
//! casbin evaluates its matcher rule by rule, so decisions are cached: per
//! (principal, dataset), under the store's policy epoch, which every change
//! of a policy, grant or runtime rule moves on. The authoriser keeps a
//! snapshot of the rules, the grants and the dataset policies; a change made
//! through this process refreshes it at once ([`DataAuthorizer::refresh`]),
//! and [`DataAuthorizer::watch`] polls the epoch so that a change made by
//! another process takes effect within its interval.
//!
//! Two rules are floors that no policy edit can lift: outside the provider
//! department a dataset of sharing type `none` is never read, and a
//! `conditional` one only under a grant in force at the moment of the
//! decision (a grant that expired a second ago no longer counts, even before
//! the sweep removes its link).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use casbin::{CoreApi, DefaultModel, Enforcer};
use chrono::{DateTime, Utc};
#[cfg(test)]
use gdx_catalog::CasbinRule;
use gdx_catalog::{Dataset, DatasetStatus, Grant, MetaStore, Principal, Role, SharingType};

use crate::adapter::StoreAdapter;
use crate::error::Result;
use crate::plan::{AccessPlan, DatasetPolicy, Denial, compile};
use crate::{Access, Error};

/// The casbin model of data access, as shipped in `policies/data_model.conf`.
pub const DATA_MODEL: &str = include_str!("../data_model.conf");
/// The default data policy, as shipped in `policies/data_policy.csv`.
pub const DATA_POLICY: &str = include_str!("../data_policy.csv");

/// Cached decisions kept at most; the cache starts again when it is full.
const CACHE_LIMIT: usize = 200_000;

/// The outcome of a decision.
pub type Decision = std::result::Result<Arc<AccessPlan>, Denial>;

/// What the authoriser decides with: one consistent view of the rules.
struct Snapshot {
    epoch: i64,
    enforcer: Enforcer,
    /// Grants not revoked, by (department, dataset), newest first.
    grants: HashMap<(String, String), Vec<Grant>>,
    policies: HashMap<String, DatasetPolicy>,
}

struct Cached {
    fingerprint: u64,
    valid_until: Option<DateTime<Utc>>,
    decision: Decision,
}

#[derive(Default)]
struct Cache {
    epoch: i64,
    len: usize,
    /// principal id → dataset id → decision.
    entries: HashMap<String, HashMap<String, Cached>>,
}

/// Decides data access with casbin and caches the compiled plans.
pub struct DataAuthorizer {
    model: String,
    defaults: String,
    store: Arc<dyn MetaStore>,
    snapshot: RwLock<Arc<Snapshot>>,
    cache: Mutex<Cache>,
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DataAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataAuthorizer").field("epoch", &self.epoch()).finish()
    }
}

impl DataAuthorizer {
    /// The authoriser of the shipped model and default policy over `store`.
    pub async fn shipped(store: Arc<dyn MetaStore>) -> Result<Self> {
        Self::from_text(DATA_MODEL, DATA_POLICY, store).await
    }

    /// An authoriser from a model and default policy read from files.
    pub async fn from_files(
        model: &std::path::Path,
        policy: &std::path::Path,
        store: Arc<dyn MetaStore>,
    ) -> Result<Self> {
        Self::from_text(&crate::error::read_file(model)?, &crate::error::read_file(policy)?, store).await
    }

    /// An authoriser from model and default policy text.
    pub async fn from_text(model: &str, defaults: &str, store: Arc<dyn MetaStore>) -> Result<Self> {
        let snapshot = load(model, defaults, &store).await?;
        Ok(Self {
            model: model.to_string(),
            defaults: defaults.to_string(),
            store,
            snapshot: RwLock::new(Arc::new(snapshot)),
            cache: Mutex::new(Cache::default()),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The policy epoch of the rules in use.
    pub fn epoch(&self) -> i64 {
        self.current().epoch
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the rules, grants and policies if the store's epoch moved on.
    pub async fn refresh(&self) -> Result<()> {
        let _one = self.refreshing.lock().await;
        let epoch = self.store.policy_epoch().await?;
        if epoch == self.epoch() {
            return Ok(());
        }
        let fresh = load(&self.model, &self.defaults, &self.store).await?;
        tracing::debug!(epoch = fresh.epoch, "data rules reloaded");
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Polls the store every `interval`: removes the links of expired grants
    /// and reloads when the epoch moved on. Runs until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.store.expire_grants(gdx_catalog::now()).await {
                tracing::warn!(error = %e, "expiring grants failed");
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reloading data rules failed");
            }
        }
    }

    /// The plan of `principal` reading `dataset` at `now`, from the cache when
    /// nothing it depends on changed.
    pub fn plan(&self, principal: &Principal, dataset: &Dataset, now: DateTime<Utc>) -> Decision {
        let snapshot = self.current();
        let fingerprint = fingerprint(principal, dataset);
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.epoch == snapshot.epoch
                && let Some(hit) = cache.entries.get(principal.id.as_str()).and_then(|m| m.get(dataset.id.as_str()))
                && hit.fingerprint == fingerprint
                && hit.valid_until.is_none_or(|t| now < t)
            {
                return hit.decision.clone();
            }
        }
        let (decision, valid_until) = decide(&snapshot, principal, dataset, now);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.epoch != snapshot.epoch || cache.len >= CACHE_LIMIT {
            *cache = Cache { epoch: snapshot.epoch, ..Cache::default() };
        }
        let entry = Cached { fingerprint, valid_until, decision: decision.clone() };
        if cache.entries.entry(principal.id.clone()).or_default().insert(dataset.id.clone(), entry).is_none() {
            cache.len += 1;
        }
        decision
    }

    /// The grant in force at `now` that lets `department` read `dataset`, if any.
    pub fn grant(&self, department: &str, dataset: &str, now: DateTime<Utc>) -> Option<Grant> {
        let snapshot = self.current();
        snapshot
            .grants
            .get(&(department.to_string(), dataset.to_string()))
            .and_then(|gs| gs.iter().find(|g| g.in_force(now)).cloned())
    }

    /// The plan decided anew, without the cache (for benchmarks and checks).
    pub fn plan_uncached(&self, principal: &Principal, dataset: &Dataset, now: DateTime<Utc>) -> Decision {
        decide(&self.current(), principal, dataset, now).0
    }

    /// The access `GET /api/v1/datasets/{id}` reports: read, requestable (a
    /// grant would let the caller read it) or none.
    pub fn access(&self, principal: &Principal, dataset: &Dataset) -> Access {
        match self.plan(principal, dataset, Utc::now()) {
            Ok(_) => Access::Read,
            Err(Denial::NeedsGrant) => Access::Requestable,
            Err(_) => Access::None,
        }
    }
}

async fn load(model: &str, defaults: &str, store: &Arc<dyn MetaStore>) -> Result<Snapshot> {
    // The epoch is read first: a change racing the load moves it on again,
    // and the next refresh loads once more.
    let epoch = store.policy_epoch().await?;
    let model = DefaultModel::from_str(model).await?;
    let enforcer = Enforcer::new(model, StoreAdapter::new(defaults, store.clone())).await?;
    let mut grants: HashMap<(String, String), Vec<Grant>> = HashMap::new();
    for g in store.grants(None, None).await? {
        if g.revoked_at.is_none() {
            grants.entry((g.department.clone(), g.dataset.clone())).or_default().push(g);
        }
    }
    let mut policies = HashMap::new();
    for (dataset, stored) in store.dataset_policies().await? {
        let policy: DatasetPolicy = serde_json::from_value(stored.doc)
            .map_err(|e| Error::Policy(format!("the stored policy of {dataset} does not parse: {e}")))?;
        policies.insert(dataset, policy);
    }
    Ok(Snapshot { epoch, enforcer, grants, policies })
}

/// What a cached decision depends on besides the rules: the principal's
/// department, roles and state, and the dataset's metadata.
fn fingerprint(principal: &Principal, dataset: &Dataset) -> u64 {
    let mut h = DefaultHasher::new();
    principal.department.hash(&mut h);
    principal.roles.hash(&mut h);
    principal.disabled.hash(&mut h);
    dataset.department.hash(&mut h);
    dataset.updated_at.hash(&mut h);
    dataset.sharing.as_str().hash(&mut h);
    dataset.status.as_str().hash(&mut h);
    dataset.columns.len().hash(&mut h);
    h.finish()
}

/// The decision, and until when it holds (the expiry of the grant it used).
fn decide(
    snapshot: &Snapshot,
    principal: &Principal,
    dataset: &Dataset,
    now: DateTime<Utc>,
) -> (Decision, Option<DateTime<Utc>>) {
    if principal.disabled {
        return (Err(Denial::Role), None);
    }
    let department = principal.department.as_deref().unwrap_or("");
    let provider = department == dataset.department;
    let class = if dataset.status == DatasetStatus::Retired { "retired" } else { dataset.sharing.as_str() };
    let allowed = principal.roles.iter().any(|role| {
        let request = (role.as_str(), department, dataset.department.as_str(), class, dataset.id.as_str(), "read");
        snapshot.enforcer.enforce(request).unwrap_or_else(|e| {
            tracing::error!(error = %e, "data rule evaluation failed; denied");
            false
        })
    });
    if !allowed {
        return (Err(explain(principal, dataset)), None);
    }
    let grant = snapshot
        .grants
        .get(&(department.to_string(), dataset.id.clone()))
        .and_then(|gs| gs.iter().find(|g| g.in_force(now)));
    if !provider {
        match dataset.sharing {
            SharingType::None => return (Err(Denial::NotShared), None),
            SharingType::Conditional if grant.is_none() => return (Err(Denial::NeedsGrant), None),
            _ => {}
        }
    }
    let policy = snapshot.policies.get(&dataset.id).cloned().unwrap_or_default();
    let plan = compile(principal, dataset, &policy, grant.filter(|_| !provider), provider);
    (plan.map(Arc::new), grant.and_then(|g| g.expires_at))
}

/// Why casbin said no, in the terms of the default policy.
fn explain(principal: &Principal, dataset: &Dataset) -> Denial {
    let reads = [Role::Steward, Role::Analyst, Role::Service].iter().any(|r| principal.has_role(*r));
    let own = principal.department.as_deref() == Some(dataset.department.as_str());
    let consumer = principal.has_role(Role::Analyst) || principal.has_role(Role::Service);
    if !reads || own || !consumer {
        return Denial::Role;
    }
    if dataset.status == DatasetStatus::Retired {
        return Denial::Retired;
    }
    match dataset.sharing {
        SharingType::None => Denial::NotShared,
        SharingType::Conditional => Denial::NeedsGrant,
        SharingType::Unconditional => Denial::Role,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gdx_catalog::{Catalog, NewDepartment, PrincipalKind, SqliteStore};

    struct World {
        _dir: tempfile::TempDir,
        store: Arc<dyn MetaStore>,
        catalog: Catalog,
    }

    async fn world() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn MetaStore> = Arc::new(SqliteStore::open(&dir.path().join("meta.db")).expect("store"));
        let catalog = Catalog::new(store.clone());
        for (id, region) in [("gongan", None), ("renshe", None), ("minzheng", None), ("meixian", Some("441421"))] {
            let d = NewDepartment {
                id: Some(id.into()),
                name: Some(id.into()),
                region: region.map(Into::into),
                ..NewDepartment::default()
            };
            catalog.create_department(d).await.expect("department");
        }
        World { _dir: dir, store, catalog }
    }

    async fn dataset(w: &World, name: &str, sharing: &str) -> Dataset {
        let input: gdx_catalog::NewDataset = serde_json::from_value(serde_json::json!({
            "department": "gongan", "name": name, "title": "户籍人口", "resource_code": format!("1-{name}"),
            "classification": "basic", "sharing": sharing, "update_cycle": "daily",
            "sharing_condition": if sharing == "conditional" { Some("依法履职需要") } else { None },
            "primary_key": ["id_number"],
            "columns": [
                {"name": "id_number", "type": "string", "nullable": false, "sensitivity": "personal", "semantic": "id_card"},
                {"name": "name", "type": "string", "sensitivity": "personal", "semantic": "person_name"},
                {"name": "phone", "type": "string", "sensitivity": "personal", "semantic": "phone"},
                {"name": "address", "type": "string", "sensitivity": "personal", "semantic": "address"},
                {"name": "county_code", "type": "string", "sensitivity": "public"},
                {"name": "criminal_record", "type": "string", "sensitivity": "secret"}
            ]
        }))
        .expect("json");
        w.catalog.create_dataset(input, "gongan_steward").await.expect("dataset")
    }

    fn who(department: &str, roles: &[Role]) -> Principal {
        Principal {
            id: format!("{department}_{}", roles.first().map(|r| r.as_str()).unwrap_or("none")),
            name: "p".into(),
            department: Some(department.into()),
            kind: PrincipalKind::User,
            roles: roles.to_vec(),
            disabled: false,
            created_at: Utc::now(),
        }
    }

    fn grant(id: &str, dataset: &Dataset, department: &str) -> Grant {
        Grant {
            id: id.into(),
            dataset: dataset.id.clone(),
            department: department.into(),
            columns: None,
            unmask: Vec::new(),
            row_filter: None,
            expires_at: None,
            rows_per_day: None,
            revoked_at: None,
            request: None,
            created_by: "gongan_steward".into(),
            created_at: Utc::now(),
        }
    }

    fn show(d: &Decision) -> String {
        match d {
            Err(d) => format!("deny {d:?}"),
            Ok(plan) => {
                let cols: Vec<String> = plan.columns.iter().map(|c| format!("{}:{}", c.name, c.mask)).collect();
                format!("allow [{}] filters {:?}", cols.join(" "), plan.row_filters)
            }
        }
    }

    /// Golden decision table: (subject, dataset) → allow/deny, columns, masks, filters,
    /// through casbin, the store's grants and the dataset policies.
    #[tokio::test]
    async fn golden_decision_table() {
        let w = world().await;
        let open = dataset(&w, "open", "unconditional").await;
        let cond = dataset(&w, "cond", "conditional").await;
        let closed = dataset(&w, "closed", "none").await;
        let masked = dataset(&w, "masked", "unconditional").await;
        let narrow = dataset(&w, "narrow", "conditional").await;
        let policy = serde_json::json!({
            "masks": [
                {"column": "county_code", "mask": "redact", "for": "role:service"},
                {"column": "name", "mask": "null", "for": "meixian"},
                {"column": "name", "mask": "redact"},
                {"column": "phone", "mask": "none", "for": "renshe"}
            ],
            "row_filters": [
                {"for": "meixian", "filter": "county_code = {{department.region}}"},
                {"filter": "county_code IS NOT NULL"}
            ]
        });
        w.store.set_dataset_policy(&masked.id, policy.clone(), "gongan_steward").await.expect("policy");
        w.store.set_dataset_policy(&narrow.id, policy, "gongan_steward").await.expect("policy");
        w.store.create_grant(grant("g1", &cond, "renshe")).await.expect("grant");
        w.store.create_grant(grant("g2", &closed, "renshe")).await.expect("grant");
        let expired =
            Grant { expires_at: Some(Utc::now() - chrono::Duration::seconds(1)), ..grant("g3", &cond, "minzheng") };
        w.store.create_grant(expired).await.expect("grant");
        let narrowing = Grant {
            columns: Some(vec!["id_number".into(), "name".into(), "criminal_record".into()]),
            unmask: vec!["id_number".into()],
            row_filter: Some("county_code = '441402'".into()),
            ..grant("g4", &narrow, "renshe")
        };
        w.store.create_grant(narrowing).await.expect("grant");
        let a = DataAuthorizer::shipped(w.store.clone()).await.expect("authoriser");

        let steward = who("gongan", &[Role::Steward]);
        let own_analyst = who("gongan", &[Role::Analyst]);
        let analyst = who("renshe", &[Role::Analyst]);
        let service = who("minzheng", &[Role::Service]);
        let county = who("meixian", &[Role::Analyst]);
        let other_steward = who("renshe", &[Role::Steward]);
        let admin = who("zhengshu", &[Role::Admin]);
        let auditor = who("zhengshu", &[Role::Auditor]);
        let all = "id_number:none name:none phone:none address:none county_code:none criminal_record:none";
        let defaults = "id_number:hash name:person_name phone:phone address:redact county_code:none";
        let table: Vec<(&Principal, &Dataset, String)> = vec![
            (&steward, &closed, format!("allow [{all}] filters []")),
            (&own_analyst, &closed, format!("allow [{all}] filters []")),
            (&admin, &open, "deny Role".into()),
            (&auditor, &open, "deny Role".into()),
            (&other_steward, &open, "deny Role".into()),
            (&analyst, &closed, "deny NotShared".into()),
            (&service, &cond, "deny NeedsGrant".into()),
            (&county, &cond, "deny NeedsGrant".into()),
            (&analyst, &cond, format!("allow [{defaults}] filters []")),
            (&analyst, &open, format!("allow [{defaults}] filters []")),
            (
                &analyst,
                &masked,
                "allow [id_number:hash name:redact phone:none address:redact county_code:none] filters [\"county_code IS NOT NULL\"]"
                    .into(),
            ),
            (
                &service,
                &masked,
                "allow [id_number:hash name:redact phone:phone address:redact county_code:redact] filters [\"county_code IS NOT NULL\"]"
                    .into(),
            ),
            (
                &county,
                &masked,
                "allow [id_number:hash name:null phone:phone address:redact county_code:none] filters [\"county_code = {{department.region}}\", \"county_code IS NOT NULL\"]"
                    .into(),
            ),
            (
                &analyst,
                &narrow,
                "allow [id_number:none name:redact] filters [\"county_code IS NOT NULL\", \"county_code = '441402'\"]".into(),
            ),
        ];
        let now = Utc::now();
        for (i, (p, d, want)) in table.iter().enumerate() {
            assert_eq!(show(&a.plan(p, d, now)), *want, "line {i}: {} on {}", p.id, d.id);
            // The cached answer is the same.
            assert_eq!(show(&a.plan(p, d, now)), *want, "line {i} cached");
        }
        assert_eq!(a.access(&analyst, &cond), Access::Read);
        assert_eq!(a.access(&service, &cond), Access::Requestable);
        assert_eq!(a.access(&analyst, &closed), Access::None);
    }

    #[tokio::test]
    async fn changes_take_effect_on_refresh_and_expiry_at_once() {
        let w = world().await;
        let cond = dataset(&w, "cond", "conditional").await;
        let analyst = who("renshe", &[Role::Analyst]);
        let a = DataAuthorizer::shipped(w.store.clone()).await.expect("authoriser");
        let now = Utc::now();
        assert_eq!(show(&a.plan(&analyst, &cond, now)), "deny NeedsGrant");
        let g = Grant { expires_at: Some(now + chrono::Duration::seconds(60)), ..grant("g1", &cond, "renshe") };
        w.store.create_grant(g).await.expect("grant");
        // Not yet reloaded: the cached denial stands.
        assert_eq!(show(&a.plan(&analyst, &cond, now)), "deny NeedsGrant");
        a.refresh().await.expect("refresh");
        assert!(a.plan(&analyst, &cond, now).is_ok());
        // A second after the grant's end it no longer counts, cached or not, link or not.
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(show(&a.plan(&analyst, &cond, later)), "deny NeedsGrant");
        assert_eq!(w.store.expire_grants(later).await.expect("expire"), 1);
        a.refresh().await.expect("refresh");
        assert_eq!(show(&a.plan(&analyst, &cond, now)), "deny NeedsGrant", "the link is gone");
        // Revocation ends a grant at once.
        w.store.revoke_grant("g1", Utc::now()).await.expect("revoke");
        w.store.create_grant(grant("g2", &cond, "renshe")).await.expect("grant");
        a.refresh().await.expect("refresh");
        assert!(a.plan(&analyst, &cond, now).is_ok());
        w.store.revoke_grant("g2", Utc::now()).await.expect("revoke");
        a.refresh().await.expect("refresh");
        assert_eq!(show(&a.plan(&analyst, &cond, now)), "deny NeedsGrant");
        // A principal losing its role, a dataset retired: no stale cached plan.
        let open = dataset(&w, "open", "unconditional").await;
        assert!(a.plan(&analyst, &open, now).is_ok());
        let demoted = Principal { roles: vec![Role::Steward], ..analyst.clone() };
        assert_eq!(show(&a.plan(&demoted, &open, now)), "deny Role");
        let retired = Dataset { status: DatasetStatus::Retired, updated_at: Utc::now(), ..open.clone() };
        assert_eq!(show(&a.plan(&analyst, &retired, now)), "deny Retired");
    }

    #[tokio::test]
    async fn the_adapter_persists_rules_added_through_casbin() {
        use casbin::MgmtApi;
        let w = world().await;
        let open = dataset(&w, "open", "unconditional").await;
        let cond = dataset(&w, "cond", "conditional").await;
        let model = DefaultModel::from_str(DATA_MODEL).await.expect("model");
        let mut e = Enforcer::new(model, StoreAdapter::new(DATA_POLICY, w.store.clone())).await.expect("enforcer");
        let before = w.store.policy_epoch().await.expect("epoch");
        assert!(e.add_named_grouping_policy("g2", vec!["renshe".into(), cond.id.clone()]).await.expect("add"));
        assert!(w.store.policy_epoch().await.expect("epoch") > before);
        assert_eq!(w.store.casbin_rules().await.expect("rules").len(), 1, "only the runtime rule is stored");
        // A fresh authoriser reads it from the store: a link alone is not a grant,
        // so the conditional floor still denies; the casbin answer is allow.
        let a = DataAuthorizer::shipped(w.store.clone()).await.expect("authoriser");
        let analyst = who("renshe", &[Role::Analyst]);
        assert!(
            a.current()
                .enforcer
                .enforce(("analyst", "renshe", "gongan", "conditional", cond.id.as_str(), "read"))
                .expect("enforce")
        );
        assert_eq!(show(&a.plan(&analyst, &cond, Utc::now())), "deny NeedsGrant");
        // Removing by filter, and a full save, keep the defaults out of the store.
        assert!(e.remove_filtered_named_grouping_policy("g2", 0, vec!["renshe".into()]).await.expect("remove"));
        assert!(w.store.casbin_rules().await.expect("rules").is_empty());
        e.add_named_grouping_policy("g2", vec!["minzheng".into(), open.id.clone()]).await.expect("add");
        e.save_policy().await.expect("save");
        let stored = w.store.casbin_rules().await.expect("rules");
        assert_eq!(stored, vec![CasbinRule { ptype: "g2".into(), values: vec!["minzheng".into(), open.id.clone()] }]);
    }
}
