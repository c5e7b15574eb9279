//! The catalogue's operations: validated creation and edits of departments,
//! principals, tokens and datasets over any [`MetaStore`].

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::model::*;
use crate::store::{MetaStore, NewToken};
use crate::token;
use crate::validate::{self, Problems};

/// Id of the bootstrap administrator.
pub const ADMIN_ID: &str = "admin";
/// Token id of the administrator token configured by `GDX_ADMIN_TOKEN` or `admin.token`.
pub const ADMIN_TOKEN_ID: &str = "tok_bootstrap";

/// A token as created: its metadata and the secret, which is never shown again.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    /// Metadata.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer secret.
    pub token: String,
}

/// The catalogue over a metadata store.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn MetaStore>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Catalog")
    }
}

/// Today in Asia/Shanghai (UTC+8, no daylight saving), the date people see.
pub fn today_shanghai() -> chrono::NaiveDate {
    (Utc::now() + chrono::Duration::hours(8)).date_naive()
}

impl Catalog {
    /// A catalogue over `store`.
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Self { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.store
    }

    /// Registers a department.
    pub async fn create_department(&self, input: NewDepartment) -> Result<Department> {
        self.store.create_department(validate::department(input)?).await
    }

    /// Creates a principal and its first token.
    pub async fn create_principal(&self, input: NewPrincipal) -> Result<(Principal, IssuedToken)> {
        let mut p = Problems::default();
        let name = p.text("name", input.name, 200);
        let department = p.required("department", input.department);
        let roles = p.required("roles", input.roles).map(|r| validate::roles(&mut p, "roles", r));
        let kind = match input.kind {
            None => Some(PrincipalKind::User),
            k => p.parse::<PrincipalKind>("kind", k),
        };
        if let Some(id) = &input.id
            && !validate::is_principal_id(id)
        {
            p.push("id", "must match [a-z][a-z0-9_.-]{0,62}");
        }
        p.finish()?;
        let (Some(name), Some(department), Some(roles), Some(kind)) = (name, department, roles, kind) else {
            return Err(Error::invalid("principal", "incomplete"));
        };
        let id = input.id.unwrap_or_else(|| {
            token::new_id(match kind {
                PrincipalKind::User => "u_",
                PrincipalKind::Service => "s_",
            })
        });
        let secret = token::new_secret();
        let new_token = NewToken {
            id: token::new_id("tok_"),
            principal: id.clone(),
            hash: token::hash(&secret),
            expires_at: None,
            certificate: None,
        };
        let principal =
            Principal { id, name, department: Some(department), kind, roles, disabled: false, created_at: now() };
        let (principal, info) = self.store.create_principal(principal, new_token).await?;
        Ok((principal, IssuedToken { info, token: secret }))
    }

    /// Changes a principal's roles or disabled flag.
    pub async fn update_principal(&self, id: &str, patch: PrincipalPatch) -> Result<Principal> {
        let mut p = Problems::default();
        let roles = patch.roles.map(|r| validate::roles(&mut p, "roles", r));
        p.finish()?;
        if id == ADMIN_ID && (patch.disabled == Some(true) || roles.as_ref().is_some_and(|r| !r.contains(&Role::Admin)))
        {
            return Err(Error::invalid("id", "the bootstrap administrator cannot be disabled or lose the admin role"));
        }
        self.store.update_principal(id, roles, patch.disabled).await
    }

    /// Issues a new token to a principal.
    pub async fn create_token(&self, principal: &str, expires_at: Option<DateTime<Utc>>) -> Result<IssuedToken> {
        if let Some(t) = expires_at
            && t <= Utc::now()
        {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
        let secret = token::new_secret();
        let info = self
            .store
            .create_token(NewToken {
                id: token::new_id("tok_"),
                principal: principal.to_string(),
                hash: token::hash(&secret),
                expires_at,
                certificate: None,
            })
            .await?;
        Ok(IssuedToken { info, token: secret })
    }

    /// Registers a client certificate for a principal: the answer is the
    /// credential, revoked like a token.
    pub async fn add_certificate(&self, principal: &str, input: NewCertificate) -> Result<TokenInfo> {
        let what = match (input.fingerprint.as_deref(), input.subject.as_deref()) {
            (Some(f), None) => {
                let hex: String = f.trim().trim_start_matches("sha256:").chars().filter(|c| *c != ':').collect();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(Error::invalid("fingerprint", "must be the 64 hex digits of a SHA-256"));
                }
                format!("sha256:{}", hex.to_ascii_lowercase())
            }
            (None, Some(s)) => {
                let s = s.trim();
                if s.is_empty() || s.chars().count() > 255 || s.chars().any(char::is_control) {
                    return Err(Error::invalid("subject", "must be a common name of 1 to 255 printable characters"));
                }
                format!("subject:{s}")
            }
            _ => return Err(Error::invalid("fingerprint", "give exactly one of fingerprint and subject")),
        };
        if let Some(t) = input.expires_at
            && t <= Utc::now()
        {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
        self.store
            .create_token(NewToken {
                id: token::new_id("crt_"),
                principal: principal.to_string(),
                hash: token::certificate_hash(&what),
                expires_at: input.expires_at,
                certificate: Some(what),
            })
            .await
    }

    /// The principal a verified client certificate stands for: the one its
    /// fingerprint is registered for, else the one its subject is.
    pub async fn authenticate_certificate(
        &self,
        fingerprint: &str,
        subject: Option<&str>,
    ) -> Result<Option<(Principal, TokenInfo)>> {
        let by_subject = subject.map(|s| format!("subject:{s}"));
        for what in std::iter::once(format!("sha256:{fingerprint}")).chain(by_subject) {
            if let Some(found) = self.live(token::certificate_hash(&what)).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The principal of a credential, if it is live and its principal enabled.
    async fn live(&self, hash: crate::store::TokenHash) -> Result<Option<(Principal, TokenInfo)>> {
        let Some((principal, info)) = self.store.authenticate(hash).await? else {
            return Ok(None);
        };
        let now = Utc::now();
        if info.revoked_at.is_some() || info.expires_at.is_some_and(|t| t <= now) || principal.disabled {
            return Ok(None);
        }
        Ok(Some((principal, info)))
    }

    /// The principal a bearer secret stands for, if the token is known, live and its principal enabled.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<(Principal, TokenInfo)>> {
        // Issued tokens are 47 characters; configured administrator tokens at least 16.
        if !(16..=512).contains(&secret.len()) {
            return Ok(None);
        }
        self.live(token::hash(secret)).await
    }

    /// Makes sure the bootstrap administrator exists and holds `secret` as its configured token.
    pub async fn bootstrap_admin(&self, secret: &str) -> Result<Principal> {
        let admin = Principal {
            id: ADMIN_ID.into(),
            name: "Platform administrator".into(),
            department: None,
            kind: PrincipalKind::User,
            roles: vec![Role::Admin],
            disabled: false,
            created_at: now(),
        };
        let token = NewToken {
            id: ADMIN_TOKEN_ID.into(),
            principal: ADMIN_ID.into(),
            hash: token::hash(secret),
            expires_at: None,
            certificate: None,
        };
        self.store.ensure_admin(admin, Some(token)).await
    }

    /// Registers a dataset on behalf of `by`.
    pub async fn create_dataset(&self, input: NewDataset, by: &str) -> Result<Dataset> {
        let mut d = validate::dataset(input, today_shanghai())?;
        d.created_by = Some(by.to_string());
        self.store.create_dataset(d).await
    }

    /// Edits a dataset's metadata.
    pub async fn update_dataset(&self, id: &str, patch: DatasetPatch) -> Result<Dataset> {
        let current = self.store.dataset(id).await?;
        let edited = validate::dataset_patch(&current, patch)?;
        self.store.update_dataset(edited).await
    }
}
