//! Data access decisions per second with 1k, 10k and 100k runtime rules in
//! the metadata store: cached plans (the path every query takes), decisions
//! made anew (casbin's matcher and the plan compiled), and reloading the rules.
//!
//! `cargo bench --workspace --bench decisions` (with `-p gdx-policies` alone cargo
//! resolves other features and rebuilds the dependency tree)

use std::sync::Arc;

use chrono::Utc;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gdx_catalog::{CasbinRule, Dataset, Grant, MetaStore, Principal, PrincipalKind, Role, SqliteStore};
use gdx_policies::DataAuthorizer;

const DEPARTMENTS: usize = 100;

fn dataset(department: &str, name: &str, sharing: &str) -> Dataset {
    let input: gdx_catalog::NewDataset = serde_json::from_value(serde_json::json!({
        "department": department, "name": name, "title": "户籍人口", "resource_code": format!("{department}-{name}"),
        "classification": "basic", "sharing": sharing, "update_cycle": "daily",
        "sharing_condition": if sharing == "conditional" { Some("依法履职需要") } else { None },
        "primary_key": ["id_number"],
        "columns": [
            {"name": "id_number", "type": "string", "nullable": false, "sensitivity": "personal", "semantic": "id_card"},
            {"name": "name", "type": "string", "sensitivity": "personal", "semantic": "person_name"},
            {"name": "phone", "type": "string", "sensitivity": "personal", "semantic": "phone"},
            {"name": "county_code", "type": "string", "sensitivity": "public"},
            {"name": "income", "type": "decimal(12,2)", "sensitivity": "internal"},
            {"name": "criminal_record", "type": "string", "sensitivity": "secret"}
        ]
    }))
    .expect("json");
    gdx_catalog::validate::dataset(input, chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date")).expect("valid")
}

fn analyst(department: &str) -> Principal {
    Principal {
        id: format!("{department}_analyst"),
        name: "analyst".into(),
        department: Some(department.into()),
        kind: PrincipalKind::User,
        roles: vec![Role::Analyst],
        disabled: false,
        created_at: Utc::now(),
    }
}

/// A store holding `rules` grant links spread over 100 departments, the
/// probed department's real grant among them, and the authoriser over it.
async fn setup(dir: &std::path::Path, rules: usize) -> (Arc<dyn MetaStore>, DataAuthorizer) {
    let store: Arc<dyn MetaStore> = Arc::new(SqliteStore::open(&dir.join("meta.db")).expect("store"));
    let links: Vec<CasbinRule> = (0..rules)
        .map(|i| CasbinRule {
            ptype: "g2".into(),
            values: vec![format!("dept{:04}", i % DEPARTMENTS), format!("prov{:03}.set{}", i % 997, i / DEPARTMENTS)],
        })
        .collect();
    store.add_casbin_rules(links).await.expect("rules");
    let catalog = gdx_catalog::Catalog::new(store.clone());
    for id in ["gongan", "renshe"] {
        let d = gdx_catalog::NewDepartment { id: Some(id.into()), name: Some(id.into()), ..Default::default() };
        catalog.create_department(d).await.expect("department");
    }
    let d = dataset("gongan", "residents", "conditional");
    store.create_dataset(d.clone()).await.expect("dataset");
    let policy = serde_json::json!({
        "masks": [{"column": "name", "mask": "redact"}],
        "row_filters": [{"filter": "county_code = {{department.region}}"}]
    });
    store.set_dataset_policy(&d.id, policy, "bench").await.expect("policy");
    let grant = Grant {
        id: "g".into(),
        dataset: d.id.clone(),
        department: "renshe".into(),
        columns: None,
        unmask: vec!["id_number".into()],
        row_filter: None,
        expires_at: None,
        rows_per_day: None,
        revoked_at: None,
        request: None,
        created_by: "bench".into(),
        created_at: Utc::now(),
    };
    store.create_grant(grant).await.expect("grant");
    let authorizer = DataAuthorizer::shipped(store.clone()).await.expect("authoriser");
    (store, authorizer)
}

fn decisions(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let residents = dataset("gongan", "residents", "conditional");
    let open = dataset("gongan", "population", "unconditional");
    let reader = analyst("renshe");
    // A department with a hundredth of the links, reading an unconditional dataset.
    let other = analyst("dept0042");
    for rules in [1_000, 10_000, 100_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, a) = rt.block_on(setup(dir.path(), rules));
        assert!(a.plan(&reader, &residents, Utc::now()).is_ok(), "the granted reader reads");
        let mut group = c.benchmark_group(format!("decisions/{rules}_rules"));
        group.bench_function("cached", |b| {
            b.iter(|| {
                let now = Utc::now();
                (a.plan(&reader, &residents, now).is_ok(), a.plan(&other, &open, now).is_ok())
            })
        });
        group.bench_function("uncached", |b| {
            b.iter(|| {
                let now = Utc::now();
                (a.plan_uncached(&reader, &residents, now).is_ok(), a.plan_uncached(&other, &open, now).is_ok())
            })
        });
        group.sample_size(10);
        group.bench_function("reload", |b| {
            b.iter_batched(
                || {
                    rt.block_on(store.add_casbin_rules(vec![CasbinRule {
                        ptype: "g2".into(),
                        values: vec!["x".into(), format!("{}", rand_id())],
                    }]))
                },
                |_| rt.block_on(a.refresh()).expect("refresh"),
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

fn rand_id() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

criterion_group!(benches, decisions);
criterion_main!(benches);
