//! Access plans: what one principal may read of one dataset.
//!
//! A plan is the compiled answer of the rules in API.md ("Access"): allowed
//! or not (and why not), the readable columns in the dataset's order, the
//! mask of each, and the row filters that apply. Governed scans, lookups and
//! push rules all read the same plan, so there is one enforcement point.
//!
//! The rules, in order:
//!
//! 1. Administrators and auditors read no data by virtue of their role; a
//!    principal without the steward, analyst or service role reads nothing.
//! 2. Readers of the provider department read every column in clear, with
//!    no row filter.
//! 3. Outside the provider: only analysts and services; never a retired
//!    dataset; `none` never, `conditional` only under a live grant,
//!    `unconditional` always (a grant may still add `unmask`).
//! 4. `secret` columns are never readable outside the provider; a grant
//!    naming `columns` narrows the readable ones to those.
//! 5. Masks: `personal` columns get their semantic default; the dataset
//!    policy's masks that apply to the reader (`*`, its department, or
//!    `role:<role>`) replace the default of their column, and among several
//!    the strongest wins. A grant's `unmask` lifts the semantic defaults of
//!    the personal columns it names (an explicit policy mask still applies:
//!    the provider can always narrow again).
//! 6. Row filters: every policy filter that applies, and the grant's, ANDed.

use chrono::{DateTime, Utc};
use gdx_catalog::{Dataset, DatasetStatus, Principal, Role, Sensitivity, SharingType};
use serde::{Deserialize, Serialize};

use crate::masks::Mask;

/// Whom a policy entry applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Audience {
    /// Every reader outside the provider department (`"*"`).
    Everyone,
    /// Readers of one department.
    Department(String),
    /// Readers holding a role (`"role:analyst"`).
    Role(Role),
}

impl From<Audience> for String {
    fn from(a: Audience) -> String {
        match a {
            Audience::Everyone => "*".into(),
            Audience::Department(d) => d,
            Audience::Role(r) => format!("role:{}", r.as_str()),
        }
    }
}

impl TryFrom<String> for Audience {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "*" {
            return Ok(Audience::Everyone);
        }
        if let Some(role) = s.strip_prefix("role:") {
            return role.parse::<Role>().map(Audience::Role).map_err(|_| format!("unknown role in {s:?}"));
        }
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Ok(Audience::Department(s));
        }
        Err(format!("{s:?} is neither \"*\", a department id nor \"role:<role>\""))
    }
}

impl Audience {
    fn includes(&self, principal: &Principal) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Department(d) => principal.department.as_deref() == Some(d.as_str()),
            Audience::Role(r) => principal.has_role(*r),
        }
    }
}

/// A mask the provider sets on a column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    /// The column.
    pub column: String,
    /// The mask.
    pub mask: Mask,
    /// Whom it applies to: `*` (every reader outside the provider, the
    /// default), a department id, or `role:<role>`.
    #[serde(rename = "for", default = "everyone")]
    #[schema(value_type = String, example = "*")]
    pub audience: Audience,
}

/// A row filter the provider sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    /// Whom it applies to (as for masks).
    #[serde(rename = "for", default = "everyone")]
    #[schema(value_type = String, example = "meixian")]
    pub audience: Audience,
    /// A scalar predicate over the dataset's columns; may use
    /// `{{department.id}}`, `{{department.region}}` and `{{principal.id}}`, unquoted.
    #[schema(example = "county_code = {{department.region}}")]
    pub filter: String,
}

fn everyone() -> Audience {
    Audience::Everyone
}

/// A dataset's masks and row filters (`GET|PUT /api/v1/datasets/{id}/policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetPolicy {
    /// Explicit masks (replacing the semantic defaults of their columns).
    #[serde(default)]
    pub masks: Vec<MaskRule>,
    /// Row filters.
    #[serde(default)]
    pub row_filters: Vec<FilterRule>,
}

impl DatasetPolicy {
    /// What is wrong with the policy for `dataset`, field by field
    /// (`masks[1].column`, `row_filters[0].filter`); empty when it is valid.
    pub fn problems(&self, dataset: &Dataset) -> Vec<(String, String)> {
        let names: Vec<String> = dataset.columns.iter().map(|c| c.name.clone()).collect();
        let mut out = Vec::new();
        for (i, m) in self.masks.iter().enumerate() {
            if !names.contains(&m.column) {
                out.push((format!("masks[{i}].column"), format!("{} has no column {}", dataset.id, m.column)));
            }
        }
        for (i, f) in self.row_filters.iter().enumerate() {
            if let Err(e) = crate::filter::parse(&f.filter, &names) {
                out.push((format!("row_filters[{i}].filter"), e));
            }
        }
        out
    }
}

/// A grant of a dataset to a department (from an approved sharing request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The dataset.
    pub dataset: String,
    /// The department granted.
    pub department: String,
    /// Only these columns are readable, when given.
    pub columns: Option<Vec<String>>,
    /// Personal columns shown in clear (their semantic default lifted).
    #[serde(default)]
    pub unmask: Vec<String>,
    /// A row filter of the grant.
    pub row_filter: Option<String>,
    /// When the grant stops; `None` for never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Grant {
    /// Whether the grant is in force at `now` for `principal`.
    pub fn live_for(&self, principal: &Principal, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none()
            && self.expires_at.is_none_or(|e| e > now)
            && principal.department.as_deref() == Some(self.department.as_str())
    }
}

/// Why a principal may not read a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Denial {
    /// No role that reads data (administrators, auditors).
    Role,
    /// The dataset is retired (readable by its provider only).
    Retired,
    /// Sharing type `none`: the provider department only.
    NotShared,
    /// Sharing type `conditional` and no live grant: requestable.
    NeedsGrant,
    /// Every column is hidden from this reader.
    NoColumns,
}

/// One readable column and how it is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnPlan {
    /// The column.
    pub name: String,
    /// Its mask (`none` for clear).
    pub mask: Mask,
}

/// What a principal may read of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessPlan {
    /// Readable columns, in the dataset's order.
    pub columns: Vec<ColumnPlan>,
    /// Row filters (templates with placeholders), all of which a row must pass.
    pub row_filters: Vec<String>,
    /// Whether the reader is of the provider department.
    pub provider: bool,
}

impl AccessPlan {
    /// The mask of a readable column; `None` for a column the reader cannot see.
    pub fn mask_of(&self, column: &str) -> Option<Mask> {
        self.columns.iter().find(|c| c.name == column).map(|c| c.mask)
    }
}

/// The plan of `principal` reading `dataset` under `policy` and `grants`
/// (grants of any department and dataset; those not in force are ignored).
pub fn plan(
    principal: &Principal,
    dataset: &Dataset,
    policy: &DatasetPolicy,
    grants: &[Grant],
    now: DateTime<Utc>,
) -> Result<AccessPlan, Denial> {
    let steward = principal.has_role(Role::Steward);
    let consumer = principal.has_role(Role::Analyst) || principal.has_role(Role::Service);
    if principal.disabled || !(steward || consumer) {
        return Err(Denial::Role);
    }
    if principal.department.as_deref() == Some(dataset.department.as_str()) {
        let columns = dataset.columns.iter().map(|c| ColumnPlan { name: c.name.clone(), mask: Mask::None }).collect();
        return Ok(AccessPlan { columns, row_filters: Vec::new(), provider: true });
    }
    if !consumer {
        return Err(Denial::Role);
    }
    if dataset.status == DatasetStatus::Retired {
        return Err(Denial::Retired);
    }
    let grant = grants.iter().find(|g| g.dataset == dataset.id && g.live_for(principal, now));
    match (dataset.sharing, grant) {
        (SharingType::None, _) => return Err(Denial::NotShared),
        (SharingType::Conditional, None) => return Err(Denial::NeedsGrant),
        _ => {}
    }
    let mut columns = Vec::new();
    for c in &dataset.columns {
        if c.sensitivity == Sensitivity::Secret {
            continue;
        }
        if let Some(only) = grant.and_then(|g| g.columns.as_ref())
            && !only.contains(&c.name)
        {
            continue;
        }
        let explicit = policy
            .masks
            .iter()
            .filter(|m| m.column == c.name && m.audience.includes(principal))
            .map(|m| m.mask)
            .reduce(Mask::strongest);
        let unmasked = grant.is_some_and(|g| g.unmask.contains(&c.name));
        let mask = match explicit {
            Some(m) => m,
            None if c.sensitivity == Sensitivity::Personal && !unmasked => Mask::default_for(c.semantic.as_deref()),
            None => Mask::None,
        };
        columns.push(ColumnPlan { name: c.name.clone(), mask });
    }
    if columns.is_empty() {
        return Err(Denial::NoColumns);
    }
    let mut row_filters: Vec<String> =
        policy.row_filters.iter().filter(|f| f.audience.includes(principal)).map(|f| f.filter.clone()).collect();
    if let Some(f) = grant.and_then(|g| g.row_filter.clone()) {
        row_filters.push(f);
    }
    Ok(AccessPlan { columns, row_filters, provider: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn dataset(sharing: &str) -> Dataset {
        let input: gdx_catalog::NewDataset = serde_json::from_value(serde_json::json!({
            "department": "gongan", "name": "population", "title": "户籍人口", "resource_code": "1-01",
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
        gdx_catalog::validate::dataset(input, chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"))
            .expect("valid")
    }

    fn who(department: &str, roles: &[Role]) -> Principal {
        Principal {
            id: format!("{department}_{}", roles.first().map(|r| r.as_str()).unwrap_or("none")),
            name: "p".into(),
            department: Some(department.into()),
            kind: gdx_catalog::PrincipalKind::User,
            roles: roles.to_vec(),
            disabled: false,
            created_at: Utc::now(),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).single().expect("time")
    }

    fn grant(department: &str) -> Grant {
        Grant {
            dataset: "gongan.population".into(),
            department: department.into(),
            columns: None,
            unmask: Vec::new(),
            row_filter: None,
            expires_at: None,
            revoked_at: None,
        }
    }

    /// One line of the decision table: who, sharing, grants → the outcome as text.
    fn decide(p: &Principal, sharing: &str, policy: &DatasetPolicy, grants: &[Grant]) -> String {
        match plan(p, &dataset(sharing), policy, grants, now()) {
            Err(d) => format!("deny {d:?}"),
            Ok(plan) => {
                let cols: Vec<String> = plan.columns.iter().map(|c| format!("{}:{}", c.name, c.mask)).collect();
                format!("allow [{}] filters {:?}", cols.join(" "), plan.row_filters)
            }
        }
    }

    #[test]
    fn golden_decision_table() {
        let none = DatasetPolicy::default();
        let policy: DatasetPolicy = serde_json::from_value(serde_json::json!({
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
        }))
        .expect("policy");
        let steward = who("gongan", &[Role::Steward]);
        let own_analyst = who("gongan", &[Role::Analyst]);
        let analyst = who("renshe", &[Role::Analyst]);
        let service = who("minzheng", &[Role::Service]);
        let county = who("meixian", &[Role::Analyst]);
        let other_steward = who("renshe", &[Role::Steward]);
        let admin = who("zhengshu", &[Role::Admin]);
        let auditor = who("zhengshu", &[Role::Auditor]);
        let expired = Grant { expires_at: Some(now() - chrono::Duration::seconds(1)), ..grant("renshe") };
        let narrow = Grant {
            columns: Some(vec!["id_number".into(), "name".into(), "criminal_record".into()]),
            unmask: vec!["id_number".into()],
            row_filter: Some("county_code = '441402'".into()),
            ..grant("renshe")
        };
        let all = "id_number:none name:none phone:none address:none county_code:none criminal_record:none";
        let defaults = "id_number:hash name:person_name phone:phone address:redact county_code:none";
        let table: Vec<(&Principal, &str, &DatasetPolicy, Vec<Grant>, String)> = vec![
            (&steward, "none", &policy, vec![], format!("allow [{all}] filters []")),
            (&own_analyst, "none", &policy, vec![], format!("allow [{all}] filters []")),
            (&admin, "unconditional", &none, vec![], "deny Role".into()),
            (&auditor, "unconditional", &none, vec![], "deny Role".into()),
            (&other_steward, "unconditional", &none, vec![], "deny Role".into()),
            (&analyst, "none", &none, vec![grant("renshe")], "deny NotShared".into()),
            (&analyst, "conditional", &none, vec![], "deny NeedsGrant".into()),
            (&analyst, "conditional", &none, vec![grant("minzheng")], "deny NeedsGrant".into()),
            (&analyst, "conditional", &none, vec![expired.clone()], "deny NeedsGrant".into()),
            (&analyst, "conditional", &none, vec![grant("renshe")], format!("allow [{defaults}] filters []")),
            (&analyst, "unconditional", &none, vec![], format!("allow [{defaults}] filters []")),
            (
                &analyst,
                "unconditional",
                &policy,
                vec![],
                "allow [id_number:hash name:redact phone:none address:redact county_code:none] filters [\"county_code IS NOT NULL\"]"
                    .into(),
            ),
            (
                &service,
                "unconditional",
                &policy,
                vec![],
                "allow [id_number:hash name:redact phone:phone address:redact county_code:redact] filters [\"county_code IS NOT NULL\"]"
                    .into(),
            ),
            (
                &county,
                "unconditional",
                &policy,
                vec![],
                "allow [id_number:hash name:null phone:phone address:redact county_code:none] filters [\"county_code = {{department.region}}\", \"county_code IS NOT NULL\"]"
                    .into(),
            ),
            (
                &analyst,
                "conditional",
                &policy,
                vec![narrow],
                "allow [id_number:none name:redact] filters [\"county_code IS NOT NULL\", \"county_code = '441402'\"]"
                    .into(),
            ),
        ];
        for (i, (p, sharing, policy, grants, want)) in table.into_iter().enumerate() {
            assert_eq!(decide(p, sharing, policy, &grants), want, "line {i}: {} on {sharing}", p.id);
        }
    }

    #[test]
    fn retired_disabled_and_fully_hidden() {
        let analyst = who("renshe", &[Role::Analyst]);
        let mut d = dataset("unconditional");
        d.status = DatasetStatus::Retired;
        assert_eq!(plan(&analyst, &d, &DatasetPolicy::default(), &[], now()), Err(Denial::Retired));
        let mut disabled = who("gongan", &[Role::Steward]);
        disabled.disabled = true;
        assert_eq!(plan(&disabled, &dataset("none"), &DatasetPolicy::default(), &[], now()), Err(Denial::Role));
        let only_secret = Grant { columns: Some(vec!["criminal_record".into()]), ..grant("renshe") };
        assert_eq!(
            plan(&analyst, &dataset("conditional"), &DatasetPolicy::default(), &[only_secret], now()),
            Err(Denial::NoColumns)
        );
    }

    #[test]
    fn audiences_parse_and_print() {
        let a: Vec<Audience> = serde_json::from_value(serde_json::json!(["*", "renshe", "role:service"])).expect("ok");
        assert_eq!(a, vec![Audience::Everyone, Audience::Department("renshe".into()), Audience::Role(Role::Service)]);
        assert_eq!(serde_json::to_value(&a).expect("json"), serde_json::json!(["*", "renshe", "role:service"]));
        assert!(serde_json::from_value::<Audience>(serde_json::json!("role:king")).is_err());
        assert!(serde_json::from_value::<Audience>(serde_json::json!("Ren She")).is_err());
    }
}
