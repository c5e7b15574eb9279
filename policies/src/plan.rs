//! Access plans: what one principal may read of one dataset.
//!
//! A plan is the compiled answer of the rules in API.md ("Access"): allowed
//! or not (and why not), the readable columns in the dataset's order, the
//! mask of each, and the row filters that apply. Governed scans, lookups and
//! push rules all read the same plan, so there is one enforcement point.
//!
//! Whether a principal may read a dataset at all is casbin's answer (see
//! [`crate::data`]); this module compiles what it sees once it may:
//!
//! 1. Readers of the provider department read every column in clear, with
//!    no row filter.
//! 2. Outside the provider, `secret` columns are never readable; a grant
//!    naming `columns` narrows the readable ones to those.
//! 3. Masks: `personal` columns get their semantic default; the dataset
//!    policy's masks that apply to the reader (`*`, its department, or
//!    `role:<role>`) replace the default of their column, and among several
//!    the strongest wins. A grant's `unmask` lifts the semantic defaults of
//!    the personal columns it names (an explicit policy mask still applies:
//!    the provider can always narrow again).
//! 4. Row filters: every policy filter that applies, and the grant's, ANDed.

use gdx_catalog::{Dataset, Grant, Principal, Role, Sensitivity};
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

/// What `principal` sees of `dataset` once it may read it: under the
/// dataset's `policy`, and the grant in force for its department, if any.
/// `provider` says the reader belongs to the provider department, which
/// reads every column in clear and every row.
pub fn compile(
    principal: &Principal,
    dataset: &Dataset,
    policy: &DatasetPolicy,
    grant: Option<&Grant>,
    provider: bool,
) -> Result<AccessPlan, Denial> {
    if provider {
        let columns = dataset.columns.iter().map(|c| ColumnPlan { name: c.name.clone(), mask: Mask::None }).collect();
        return Ok(AccessPlan { columns, row_filters: Vec::new(), provider: true });
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

    #[test]
    fn audiences_parse_and_print() {
        let a: Vec<Audience> = serde_json::from_value(serde_json::json!(["*", "renshe", "role:service"])).expect("ok");
        assert_eq!(a, vec![Audience::Everyone, Audience::Department("renshe".into()), Audience::Role(Role::Service)]);
        assert_eq!(serde_json::to_value(&a).expect("json"), serde_json::json!(["*", "renshe", "role:service"]));
        assert!(serde_json::from_value::<Audience>(serde_json::json!("role:king")).is_err());
        assert!(serde_json::from_value::<Audience>(serde_json::json!("Ren She")).is_err());
    }
}
