//! The route authoriser: casbin decides whether a role may call a route.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};
use gdx_catalog::Principal;

use crate::error::Result;

/// The casbin model of routes, as shipped in `policies/route_model.conf`.
pub const ROUTE_MODEL: &str = include_str!("../route_model.conf");
/// The default route policy, as shipped in `policies/route_policy.csv`.
pub const ROUTE_POLICY: &str = include_str!("../route_policy.csv");

/// Whose object a request concerns, relative to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// No department's object (the catalogue list, the caller itself, ...).
    None,
    /// An object of the caller's own department.
    Own,
    /// An object of another department.
    Other,
    /// The department is named in the request body: the handler must decide
    /// again with [`RouteAuthorizer::decide`] once it has read it.
    Deferred,
}

impl Scope {
    /// The scope of an object of `department` for `principal`.
    pub fn of(principal: &Principal, department: &str) -> Self {
        if principal.department.as_deref() == Some(department) { Scope::Own } else { Scope::Other }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scope::None => "none",
            Scope::Own => "own",
            Scope::Other => "other",
            Scope::Deferred => "deferred",
        }
    }
}

/// Decides routes with casbin. The route policy does not change while the
/// server runs, so each (role, route, method, scope) is decided once.
pub struct RouteAuthorizer {
    enforcer: RwLock<Enforcer>,
    decided: RwLock<HashMap<(String, String, String, Scope), bool>>,
}

impl std::fmt::Debug for RouteAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteAuthorizer")
    }
}

impl RouteAuthorizer {
    /// The authoriser of the shipped model and default policy.
    pub async fn shipped() -> Result<Self> {
        Self::from_text(ROUTE_MODEL, ROUTE_POLICY).await
    }

    /// An authoriser from a model and policy read from files.
    pub async fn from_files(model: &Path, policy: &Path) -> Result<Self> {
        Self::from_text(&crate::error::read_file(model)?, &crate::error::read_file(policy)?).await
    }

    /// An authoriser from model and policy text.
    pub async fn from_text(model: &str, policy: &str) -> Result<Self> {
        let model = DefaultModel::from_str(model).await?;
        let enforcer = Enforcer::new(model, StringAdapter::new(policy)).await?;
        Ok(Self { enforcer: RwLock::new(enforcer), decided: RwLock::default() })
    }

    /// Whether any role of `principal` may call `method route` on an object of `scope`.
    pub fn decide(&self, principal: &Principal, route: &str, method: &str, scope: Scope) -> Result<bool> {
        for role in &principal.roles {
            let key = (role.as_str().to_string(), route.to_string(), method.to_string(), scope);
            let known = self.decided.read().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
            let allowed = match known {
                Some(a) => a,
                None => {
                    let enforcer = self.enforcer.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let a = enforcer.enforce((role.as_str(), route, method, scope.as_str()))?;
                    let mut decided = self.decided.write().unwrap_or_else(|p| p.into_inner());
                    // Routes are templates and roles a closed set: this stays small.
                    decided.insert(key, a);
                    a
                }
            };
            if allowed {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gdx_catalog::{PrincipalKind, Role};

    fn principal(roles: &[Role], department: &str) -> Principal {
        Principal {
            id: "p".into(),
            name: "p".into(),
            department: Some(department.into()),
            kind: PrincipalKind::User,
            roles: roles.to_vec(),
            disabled: false,
            created_at: chrono::Utc::now(),
        }
    }

    /// Golden decision table: (roles, route, method, scope) -> allowed.
    #[tokio::test]
    async fn decision_table() {
        let a = RouteAuthorizer::shipped().await.expect("shipped policy loads");
        use Role::*;
        use Scope::*;
        let table: &[(&[Role], &str, &str, Scope, bool)] = &[
            (&[Analyst], "/api/v1/datasets", "GET", None, true),
            (&[Analyst], "/api/v1/datasets", "POST", Deferred, false),
            (&[Analyst], "/api/v1/departments", "POST", None, false),
            (&[Steward], "/api/v1/datasets", "POST", Deferred, true),
            (&[Steward], "/api/v1/datasets", "POST", Own, true),
            (&[Steward], "/api/v1/datasets", "POST", Other, false),
            (&[Steward], "/api/v1/datasets/{id}", "PATCH", Own, true),
            (&[Steward], "/api/v1/datasets/{id}", "PATCH", Other, false),
            (&[Admin], "/api/v1/datasets/{id}", "PATCH", Other, true),
            (&[Admin], "/api/v1/principals", "POST", None, true),
            (&[Steward], "/api/v1/principals", "POST", None, false),
            (&[Service], "/api/v1/me", "GET", None, true),
            (&[Auditor], "/metrics", "GET", None, true),
            (&[Analyst], "/metrics", "GET", None, false),
            (&[Analyst, Steward], "/api/v1/datasets/{id}", "PATCH", Own, true),
            (&[], "/api/v1/me", "GET", None, false),
            (&[Admin], "/api/v1/unknown", "GET", None, false),
            (&[Analyst], "/api/v1/sharing-requests", "POST", None, true),
            (&[Service], "/api/v1/sharing-requests", "POST", None, true),
            (&[Steward], "/api/v1/sharing-requests", "POST", None, false),
            (&[Admin], "/api/v1/sharing-requests", "POST", None, false),
            (&[Steward], "/api/v1/sharing-requests/{id}/approve", "POST", Own, true),
            (&[Steward], "/api/v1/sharing-requests/{id}/approve", "POST", Other, false),
            (&[Admin], "/api/v1/sharing-requests/{id}/approve", "POST", Other, false),
            (&[Analyst], "/api/v1/sharing-requests/{id}/reject", "POST", Own, false),
            (&[Steward], "/api/v1/feedback/{id}/resolve", "POST", Own, true),
            (&[Steward], "/api/v1/feedback/{id}/resolve", "POST", Other, false),
            (&[Auditor], "/api/v1/audit", "GET", None, true),
            (&[Admin], "/api/v1/audit", "GET", None, false),
            (&[Steward], "/api/v1/audit/verify", "GET", None, false),
            (&[Auditor], "/api/v1/audit/subjects/{key}", "GET", None, true),
            (&[Analyst], "/api/v1/stats/usage", "GET", None, false),
            (&[Auditor], "/api/v1/supervision/overdue", "GET", None, true),
            (&[Auditor], "/api/v1/query", "POST", None, true),
        ];
        for (roles, route, method, scope, want) in table {
            let got = a.decide(&principal(roles, "gongan"), route, method, *scope).expect("decides");
            assert_eq!(got, *want, "{roles:?} {method} {route} {scope:?}");
        }
    }
}
