//! The catalogue's objects: departments, principals, tokens, datasets and versions.
//!
//! Inputs (`New*`, `*Patch`) are what a client sends; they are checked by
//! [`crate::validate`] into the stored objects, collecting every problem with
//! the path of the field it concerns.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The current time at the precision the metadata store keeps (microseconds),
/// so an object answered at creation equals the same object read back.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// Defines a closed set of lowercase string values with serde, `Display` and `FromStr`.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        // Every spelling is the variant's name in lowercase: `rename_all` (rather than a
        // per-variant rename) is what the OpenAPI derive reads through this macro.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire and storage spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The accepted spellings joined for error messages.
            pub fn expected() -> String {
                [$($text),+].join("|")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("must be one of {}", Self::expected())),
                }
            }
        }
    };
}

string_enum!(
    /// Catalogue classification of the national catalogue guide.
    Classification { Basic => "basic", Thematic => "thematic", Department => "department" }
);
string_enum!(
    /// Sharing type under the Interim Measures.
    SharingType { Unconditional => "unconditional", Conditional => "conditional", None => "none" }
);
string_enum!(
    /// How often the provider updates the resource.
    UpdateCycle {
        Realtime => "realtime", Daily => "daily", Weekly => "weekly", Monthly => "monthly",
        Quarterly => "quarterly", Yearly => "yearly", Irregular => "irregular"
    }
);
string_enum!(
    /// How sensitive the values of a column are.
    Sensitivity { Public => "public", Internal => "internal", Personal => "personal", Secret => "secret" }
);
string_enum!(
    /// Lifecycle of a dataset.
    DatasetStatus { Active => "active", Retired => "retired" }
);
string_enum!(
    /// What a principal may do, per the default policy.
    Role { Admin => "admin", Steward => "steward", Analyst => "analyst", Service => "service", Auditor => "auditor" }
);
string_enum!(
    /// A person or a system.
    PrincipalKind { User => "user", Service => "service" }
);

/// The type of an information item (column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// true / false.
    Boolean,
    /// Calendar date.
    Date,
    /// Instant in time (UTC, microseconds).
    Timestamp,
    /// Fixed-point decimal with precision and scale.
    Decimal {
        /// Total digits, 1..=38.
        precision: u8,
        /// Digits after the point, 0..=precision.
        scale: i8,
    },
}

impl ColumnType {
    /// The Arrow type the lake stores this column as.
    pub fn arrow_type(self) -> arrow_schema::DataType {
        use arrow_schema::{DataType, TimeUnit};
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::String => f.write_str("string"),
            ColumnType::Int64 => f.write_str("int64"),
            ColumnType::Float64 => f.write_str("float64"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
        }
    }
}

impl FromStr for ColumnType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "must be one of string|int64|float64|boolean|date|timestamp|decimal(p,s)";
        let t = s.trim();
        Ok(match t {
            "string" => ColumnType::String,
            "int64" => ColumnType::Int64,
            "float64" => ColumnType::Float64,
            "boolean" => ColumnType::Boolean,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            _ => {
                let inner =
                    t.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')).ok_or_else(|| EXPECTED.to_string())?;
                let (p, s) = inner.split_once(',').ok_or_else(|| EXPECTED.to_string())?;
                let precision: u8 = p.trim().parse().map_err(|_| EXPECTED.to_string())?;
                let scale: i8 = s.trim().parse().map_err(|_| EXPECTED.to_string())?;
                if !(1..=38).contains(&precision) {
                    return Err("decimal precision must be between 1 and 38".into());
                }
                if scale < 0 || scale as u8 > precision {
                    return Err("decimal scale must be between 0 and the precision".into());
                }
                ColumnType::Decimal { precision, scale }
            }
        })
    }
}

impl Serialize for ColumnType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for ColumnType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^(string|int64|float64|boolean|date|timestamp|decimal\(\d+,\d+\))$"))
            .examples([serde_json::json!("decimal(12,2)")])
            .into()
    }
}

impl ToSchema for ColumnType {}

/// A department (provider or consumer of data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Department {
    /// Lowercase SQL identifier, also the SQL schema of its datasets.
    pub id: String,
    /// Display name, e.g. `梅州市公安局`.
    pub name: String,
    /// Organisation code (9 characters, GB 11714) or unified social credit code (18, GB 32100).
    pub org_code: Option<String>,
    /// Administrative division code, 6 or 12 digits.
    pub region: Option<String>,
    /// The department above this one.
    pub parent: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Input of `POST /api/v1/departments`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDepartment {
    /// Lowercase SQL identifier (`[a-z][a-z0-9_]{0,62}`).
    #[schema(pattern = r"^[a-z][a-z0-9_]{0,62}$")]
    pub id: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Organisation code or unified social credit code.
    pub org_code: Option<String>,
    /// Administrative division code, 6 or 12 digits.
    #[schema(pattern = r"^([0-9]{6}|[0-9]{12})$")]
    pub region: Option<String>,
    /// Id of the parent department.
    pub parent: Option<String>,
}

/// A person or system that authenticates to GDX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Principal {
    /// Stable identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The department it acts for; `None` only for the bootstrap administrator.
    pub department: Option<String>,
    /// User or service.
    pub kind: PrincipalKind,
    /// Roles held.
    pub roles: Vec<Role>,
    /// A disabled principal cannot authenticate.
    pub disabled: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl Principal {
    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Input of `POST /api/v1/principals`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    /// Optional identifier (`[a-z][a-z0-9_.-]{0,62}`); generated when absent.
    #[schema(pattern = r"^[a-z][a-z0-9_.-]{0,62}$")]
    pub id: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Department id.
    pub department: Option<String>,
    /// At least one role.
    pub roles: Option<Vec<String>>,
    /// `user` (default) or `service`.
    pub kind: Option<String>,
}

/// Input of `PATCH /api/v1/principals/{id}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrincipalPatch {
    /// Replaces the roles.
    pub roles: Option<Vec<String>>,
    /// Disables or re-enables the principal.
    pub disabled: Option<bool>,
}

/// Input of `POST /api/v1/principals/{id}/certificates`: a client
/// certificate that authenticates as the principal over mutual TLS, known by
/// its fingerprint or by its subject's common name (exactly one of them).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCertificate {
    /// SHA-256 of the certificate (DER), hex, colons allowed: that one certificate.
    pub fingerprint: Option<String>,
    /// The subject common name (CN): any certificate of the client CA issued to that name.
    pub subject: Option<String>,
    /// When the binding stops working (RFC 3339).
    pub expires_at: Option<DateTime<Utc>>,
}

/// A bearer token's metadata (the secret is shown once and stored hashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Token id, used to revoke it.
    pub id: String,
    /// Whose token it is.
    pub principal: String,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// For a client-certificate credential, what the certificate is known by:
    /// `sha256:<fingerprint>` or `subject:<common name>`; absent for a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// An information item: one column of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Column {
    /// Lowercase SQL identifier.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Whether values may be missing.
    pub nullable: bool,
    /// Human title, e.g. `公民身份号码`.
    pub title: Option<String>,
    /// Sensitivity class.
    pub sensitivity: Sensitivity,
    /// Semantic type: `id_card`, `credit_code`, `phone`, `person_name`, `address`, ...
    pub semantic: Option<String>,
    /// Free description.
    pub description: Option<String>,
}

/// A column as a client sends it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewColumn {
    /// Lowercase SQL identifier.
    #[schema(pattern = r"^[a-z][a-z0-9_]{0,62}$")]
    pub name: Option<String>,
    /// `string|int64|float64|boolean|date|timestamp|decimal(p,s)`.
    #[serde(rename = "type")]
    pub column_type: Option<String>,
    /// Default `true`.
    pub nullable: Option<bool>,
    /// Human title.
    pub title: Option<String>,
    /// `public|internal|personal|secret`, default `internal`.
    pub sensitivity: Option<String>,
    /// Semantic type.
    pub semantic: Option<String>,
    /// Free description.
    pub description: Option<String>,
}

/// The provider department of a dataset id (`{department}.{name}`).
pub fn provider_of(dataset_id: &str) -> &str {
    dataset_id.split_once('.').map(|(d, _)| d).unwrap_or(dataset_id)
}

/// A catalogue entry (information resource).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dataset {
    /// `{department}.{name}`: the same string in URLs and SQL.
    pub id: String,
    /// Provider department.
    pub department: String,
    /// Lowercase SQL identifier within the department.
    pub name: String,
    /// Resource title.
    pub title: String,
    /// Resource code of the catalogue.
    pub resource_code: String,
    /// basic / thematic / department.
    pub classification: Classification,
    /// Category within the classification, e.g. `人口`.
    pub category: Option<String>,
    /// Abstract.
    pub description: Option<String>,
    /// Resource format; `table` by default.
    pub format: String,
    /// Sharing type.
    pub sharing: SharingType,
    /// Conditions of sharing (required when conditional).
    pub sharing_condition: Option<String>,
    /// Open to the public.
    pub open: bool,
    /// Update cycle.
    pub update_cycle: UpdateCycle,
    /// Publication date.
    pub published_on: NaiveDate,
    /// Related resource codes.
    pub related: Vec<String>,
    /// Information items.
    pub columns: Vec<Column>,
    /// Primary-key columns.
    pub primary_key: Vec<String>,
    /// active / retired.
    pub status: DatasetStatus,
    /// Latest committed version; `None` before the first push.
    pub current_version: Option<i64>,
    /// Rows in the current version.
    pub row_count: i64,
    /// Who registered it.
    pub created_by: Option<String>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// Last metadata change or commit.
    pub updated_at: DateTime<Utc>,
}

impl Dataset {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The Arrow schema of the dataset's table.
    pub fn arrow_schema(&self) -> arrow_schema::Schema {
        arrow_schema::Schema::new(
            self.columns
                .iter()
                .map(|c| arrow_schema::Field::new(&c.name, c.column_type.arrow_type(), c.nullable))
                .collect::<Vec<_>>(),
        )
    }
}

/// Input of `POST /api/v1/datasets`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDataset {
    /// Provider department id (required).
    #[schema(pattern = r"^[a-z][a-z0-9_]{0,62}$")]
    pub department: Option<String>,
    /// Lowercase SQL identifier (required).
    #[schema(pattern = r"^[a-z][a-z0-9_]{0,62}$")]
    pub name: Option<String>,
    /// Title (required).
    pub title: Option<String>,
    /// Resource code (required, unique).
    pub resource_code: Option<String>,
    /// basic|thematic|department (required).
    pub classification: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Abstract.
    pub description: Option<String>,
    /// Format, default `table`.
    pub format: Option<String>,
    /// unconditional|conditional|none (required).
    pub sharing: Option<String>,
    /// Required when `sharing` is `conditional`.
    pub sharing_condition: Option<String>,
    /// Default `false`.
    pub open: Option<bool>,
    /// realtime|daily|weekly|monthly|quarterly|yearly|irregular (required).
    pub update_cycle: Option<String>,
    /// `YYYY-MM-DD`, default today (Asia/Shanghai).
    pub published_on: Option<String>,
    /// Related resource codes.
    pub related: Option<Vec<String>>,
    /// Information items (required, at least one).
    pub columns: Option<Vec<NewColumn>>,
    /// Primary-key columns (required, at least one).
    pub primary_key: Option<Vec<String>>,
}

/// Input of `PATCH /api/v1/datasets/{id}`: every field optional.
///
/// `columns` is the full new list: existing columns keep their name, type and
/// nullability (title, sensitivity, semantic and description may change) and
/// appear first in their order; new columns are appended and must be nullable.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetPatch {
    /// New title.
    pub title: Option<String>,
    /// New resource code (unique).
    pub resource_code: Option<String>,
    /// New classification.
    pub classification: Option<String>,
    /// New category.
    pub category: Option<String>,
    /// New abstract.
    pub description: Option<String>,
    /// New format.
    pub format: Option<String>,
    /// New sharing type.
    pub sharing: Option<String>,
    /// New sharing condition.
    pub sharing_condition: Option<String>,
    /// New open attribute.
    pub open: Option<bool>,
    /// New update cycle.
    pub update_cycle: Option<String>,
    /// New publication date.
    pub published_on: Option<String>,
    /// New related resource codes.
    pub related: Option<Vec<String>>,
    /// The full column list (see the type's docs).
    pub columns: Option<Vec<NewColumn>>,
    /// `active` or `retired`.
    pub status: Option<String>,
}

/// One committed version of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Version {
    /// 1, 2, ... one per committed push.
    pub version: i64,
    /// append / replace / upsert.
    pub mode: String,
    /// Rows in the version after the commit.
    pub row_count: i64,
    /// Rows the push wrote.
    pub rows_written: i64,
    /// Bytes the push wrote.
    pub bytes: i64,
    /// When it was committed.
    pub committed_at: DateTime<Utc>,
    /// Principal that pushed it.
    pub committed_by: Option<String>,
    /// Rows set aside by `on_error=skip` (retrievable by the provider's stewards).
    pub rejected: i64,
    /// The Delta table version holding it (for other Delta readers' time travel).
    pub delta_version: Option<i64>,
    /// The client's idempotency key, never shown.
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

/// Filters of a catalogue search.
#[derive(Debug, Clone, Default)]
pub struct DatasetQuery {
    /// Free text (Chinese or other), over titles, descriptions and column titles.
    pub q: Option<String>,
    /// Only this classification.
    pub classification: Option<Classification>,
    /// Only this provider department.
    pub department: Option<String>,
    /// Only this sharing type.
    pub sharing: Option<SharingType>,
    /// Only open (or only closed) resources.
    pub open: Option<bool>,
    /// Only this status; `None` lists every status.
    pub status: Option<DatasetStatus>,
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Token for the next page; `null` on the last.
    pub next_page_token: Option<String>,
}

/// Where a page starts and how long it is.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// Items per page, 1..=1000 (100 by default).
    pub limit: usize,
    /// Opaque token from the previous page.
    pub token: Option<String>,
}

impl PageRequest {
    /// Default page size.
    pub const DEFAULT_LIMIT: usize = 100;
    /// Largest page size.
    pub const MAX_LIMIT: usize = 1000;

    /// A first page of `limit` items.
    pub fn first(limit: usize) -> Self {
        Self { limit, token: None }
    }

    /// The offset encoded in the token (tokens are opaque to clients).
    pub fn offset(&self) -> crate::Result<usize> {
        use base64::Engine;
        let Some(token) = &self.token else { return Ok(0) };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse().ok()))
            .ok_or_else(|| crate::Error::invalid("page_token", "is not a token this server issued"))
    }

    /// Builds a page from `items` fetched with one extra row to tell whether more follow.
    pub fn page<T>(&self, mut items: Vec<T>) -> crate::Result<Page<T>> {
        use base64::Engine;
        let offset = self.offset()?;
        let next_page_token = if items.len() > self.limit {
            items.truncate(self.limit);
            Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{}", offset + self.limit)))
        } else {
            None
        };
        Ok(Page { items, next_page_token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serde spelling of every closed-set value is its `as_str`.
    #[test]
    fn string_enums_spell_as_declared() {
        fn check<T: Serialize + FromStr<Err = String> + PartialEq + std::fmt::Debug + Copy>(
            all: &[T],
            text: fn(T) -> &'static str,
        ) {
            for v in all {
                assert_eq!(serde_json::to_value(v).expect("serialises"), serde_json::json!(text(*v)));
                assert_eq!(text(*v).parse::<T>(), Ok(*v));
            }
        }
        check(Classification::ALL, Classification::as_str);
        check(SharingType::ALL, SharingType::as_str);
        check(UpdateCycle::ALL, UpdateCycle::as_str);
        check(Sensitivity::ALL, Sensitivity::as_str);
        check(DatasetStatus::ALL, DatasetStatus::as_str);
        check(Role::ALL, Role::as_str);
        check(PrincipalKind::ALL, PrincipalKind::as_str);
    }
}

/// A grant of a dataset to a department, from an approved sharing request.
///
/// While it is in force (not revoked, not expired) the store keeps the casbin
/// link `g2, <department>, <dataset>` beside it, which is what lets the
/// department read the dataset; the rest of the grant narrows or widens what
/// it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grant {
    /// Grant id.
    pub id: String,
    /// The dataset.
    pub dataset: String,
    /// The department granted.
    pub department: String,
    /// Only these columns are readable, when given.
    pub columns: Option<Vec<String>>,
    /// Personal columns shown in clear (their semantic default mask lifted).
    #[serde(default)]
    pub unmask: Vec<String>,
    /// A row filter of the grant (the same language as a policy's).
    pub row_filter: Option<String>,
    /// When the grant ends; `None` for never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Rows the department may receive from the dataset under this grant in
    /// a day (Asia/Shanghai); `None` for no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_day: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The sharing request it answers, if any.
    pub request: Option<String>,
    /// Who granted it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl Grant {
    /// Whether the grant is in force at `now`.
    pub fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// One runtime casbin rule as the metadata store keeps it: the policy type
/// (`p`, `g2`, ...) and its values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CasbinRule {
    /// `p`, `p2`, `g`, `g2`, ...
    pub ptype: String,
    /// The rule's values (at most six).
    pub values: Vec<String>,
}

string_enum!(
    /// Where a sharing request stands.
    RequestStatus { Pending => "pending", Approved => "approved", Rejected => "rejected" }
);
string_enum!(
    /// Where a data-quality feedback stands.
    FeedbackStatus { Open => "open", Corrected => "corrected", Rejected => "rejected" }
);

/// What a grant lets a department read of a dataset (asked for, or approved).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantScope {
    /// Only these columns are readable; `None` for every column the policy shows.
    pub columns: Option<Vec<String>>,
    /// Personal columns to be shown in clear.
    #[serde(default)]
    pub unmask: Vec<String>,
    /// A row filter (the language of a policy's row filters).
    pub row_filter: Option<String>,
    /// When the grant ends; `None` for never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Rows a day the grant allows (set by the provider when approving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_day: Option<u64>,
}

/// A sharing request: a department asks a provider for a dataset (or, for an
/// unconditional one, for personal columns in clear), with a purpose, and is
/// answered within a deadline counted in working days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SharingRequest {
    /// Request id.
    pub id: String,
    /// The dataset asked for.
    pub dataset: String,
    /// The department that provides it.
    pub provider: String,
    /// The department asking.
    pub department: String,
    /// The principal who asked.
    pub requested_by: String,
    /// What the data is for (required).
    pub purpose: String,
    /// What was asked for.
    pub requested: GrantScope,
    /// `pending`, `approved` or `rejected`.
    pub status: RequestStatus,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it must be answered: the end of the last working day, Asia/Shanghai.
    pub due_at: DateTime<Utc>,
    /// That day, in Asia/Shanghai.
    pub due_on: NaiveDate,
    /// How the deadline was counted (holidays skipped, make-up days counted).
    pub due_explanation: String,
    /// Whether it was still pending after `due_at` (at the time of reading, or when it was answered).
    #[serde(default)]
    pub overdue: bool,
    /// Who answered it.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<DateTime<Utc>>,
    /// What was approved (never wider than what was asked for).
    pub approved: Option<GrantScope>,
    /// The grant an approval created.
    pub grant_id: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
}

impl SharingRequest {
    /// Sets `overdue` as of `now`: pending past the deadline, or answered after it.
    pub fn with_overdue(mut self, now: DateTime<Utc>) -> Self {
        self.overdue = match self.decided_at {
            Some(at) => at > self.due_at,
            None => now > self.due_at,
        };
        self
    }
}

/// A data-quality feedback (doubt and correction): a consumer flags a record
/// of a dataset; the provider's stewards answer it by a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Feedback {
    /// Feedback id.
    pub id: String,
    /// The dataset.
    pub dataset: String,
    /// The department that provides it.
    pub provider: String,
    /// The department that flagged the record.
    pub department: String,
    /// The principal who flagged it.
    pub created_by: String,
    /// The record's key (its primary key value, or `col=value&...` for a composite key).
    pub key: String,
    /// The column in doubt, if one.
    pub column: Option<String>,
    /// What seems wrong.
    pub comment: String,
    /// `open`, `corrected` or `rejected`.
    pub status: FeedbackStatus,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it must be answered (end of the last working day, Asia/Shanghai).
    pub due_at: DateTime<Utc>,
    /// That day, in Asia/Shanghai.
    pub due_on: NaiveDate,
    /// Whether it was still open after `due_at` (at reading, or when resolved).
    #[serde(default)]
    pub overdue: bool,
    /// The version that corrected the record.
    pub version: Option<i64>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When.
    pub resolved_at: Option<DateTime<Utc>>,
}

impl Feedback {
    /// Sets `overdue` as of `now`.
    pub fn with_overdue(mut self, now: DateTime<Utc>) -> Self {
        self.overdue = match self.resolved_at {
            Some(at) => at > self.due_at,
            None => now > self.due_at,
        };
        self
    }
}

/// Which requests or feedback to list.
#[derive(Debug, Clone, Default)]
pub struct WorkQuery {
    /// Only those of datasets this department provides.
    pub provider: Option<String>,
    /// Only those made by this department.
    pub department: Option<String>,
    /// Only those this department provides or made (either side).
    pub involving: Option<String>,
    /// Only this status (`pending`/`approved`/`rejected`, `open`/`corrected`/`rejected`).
    pub status: Option<String>,
    /// Only those still unanswered after their deadline, as of this instant.
    pub overdue_at: Option<DateTime<Utc>>,
    /// Only those of this dataset.
    pub dataset: Option<String>,
}
