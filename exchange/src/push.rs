//! Proactive pushes: rules over shared data that tell a service when a
//! citizen or an enterprise comes to qualify for something.
//!
//! A rule is governed SQL run as its owner ([`eval`]), with the column that
//! names the subject, a message template and a trigger: `on_change` of
//! datasets (evaluated after each of their commits) or a cron `schedule`
//! ([`cron`]). Each evaluation diffs what matches against what matched the
//! time before, by a fingerprint of each subject's row, and commits the
//! events of subjects that newly match (or whose row changed) together with
//! the new state, in one transaction of [`store`]: the outbox. The
//! deliverer ([`deliver`]) sends the outbox to each rule's webhook, signed,
//! and retries on a schedule until the receiver accepts or the event is
//! dead-lettered. Events can also be pulled over the API.

pub mod cron;
pub mod deliver;
pub mod eval;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub use store::{Delivery, Evaluated, PushStore};

/// The push store's file in the data directory.
pub const PUSH_DB: &str = "push.db";

/// When a rule is evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// After each commit of any of these datasets.
    OnChange(Vec<String>),
    /// On a cron schedule (five fields, Asia/Shanghai time).
    Schedule(String),
}

/// A rule as its owner defined it (the webhook secret is kept apart, sealed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleDef {
    /// A name, unique among the owner's rules.
    pub name: String,
    /// The governed SQL; each row names a subject that qualifies.
    pub sql: String,
    /// The column of the answer that names the subject.
    pub subject_column: String,
    /// The message template, `{{column}}` filled from the subject's row.
    pub message: Option<String>,
    /// When it runs.
    pub trigger: Trigger,
    /// Where its events are sent, if anywhere (else they are only pulled).
    pub webhook_url: Option<String>,
    /// Why the data is used (recorded with each evaluation and push).
    pub purpose: String,
    /// Whether the first evaluation emits events for subjects that already match.
    pub backfill: bool,
    /// Events per subject per day (Asia/Shanghai) at most.
    pub max_per_subject: Option<u32>,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `rule_<hex>`.
    pub id: String,
    /// The principal it runs as.
    pub owner: String,
    /// The owner's department when it was created.
    pub department: Option<String>,
    /// The definition.
    pub def: RuleDef,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Where a rule's evaluations stand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RuleState {
    /// Evaluations so far.
    pub evaluations: i64,
    /// The GDX version of each trigger dataset the last evaluation saw.
    pub seen: BTreeMap<String, i64>,
    /// When it was last evaluated.
    pub evaluated_at: Option<DateTime<Utc>>,
    /// `ok` or `failed`.
    pub status: Option<String>,
    /// Why the last evaluation failed.
    pub error: Option<String>,
    /// Subjects matching at the last evaluation.
    pub matched: Option<i64>,
    /// Events the last evaluation wrote.
    pub last_events: Option<i64>,
    /// Events written in all.
    pub events: i64,
    /// What the last successful evaluation read: `all` the rows, or only the
    /// `changes` since the one before (from the change data feed).
    pub read: Option<String>,
}

/// The push engine's shared part: the store, the wake-ups of the evaluator
/// and of the deliverer, and one lock per rule so that a rule is never
/// evaluated twice at once.
#[derive(Debug)]
pub struct Push {
    /// The store.
    pub store: PushStore,
    /// Wakes the evaluator (a dataset changed, a rule was added).
    pub evaluate: tokio::sync::Notify,
    /// Wakes the deliverer (new events, a retry).
    pub deliver: tokio::sync::Notify,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The changed rows of recent version ranges, read once for every rule
    /// that evaluates them.
    pub changes: eval::ChangeCache,
}

impl Push {
    /// The engine over `store`.
    pub fn new(store: PushStore) -> Self {
        Self {
            store,
            evaluate: tokio::sync::Notify::new(),
            deliver: tokio::sync::Notify::new(),
            locks: Mutex::new(HashMap::new()),
            changes: eval::ChangeCache::default(),
        }
    }

    /// The evaluation lock of a rule.
    pub fn lock(&self, rule: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(rule.to_string()).or_default().clone()
    }

    /// Tells the evaluator that datasets changed.
    pub fn changed(&self) {
        self.evaluate.notify_one();
    }
}

/// The key stream that seals webhook secrets: HMAC-SHA256 under the
/// platform secret, in counter mode, bound to the rule id (each rule's
/// secret is sealed once, under its own id). A copy of the data directory
/// without the platform secret holds no usable webhook secret.
fn keystream(platform: &[u8; 32], rule: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u32;
    while out.len() < len {
        let mut mac = Hmac::<Sha256>::new_from_slice(platform).unwrap_or_else(|_| unreachable!());
        mac.update(b"gdx webhook secret\0");
        mac.update(rule.as_bytes());
        mac.update(&counter.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// A webhook secret sealed for storage.
pub fn seal(platform: &[u8; 32], rule: &str, secret: &str) -> Vec<u8> {
    let bytes = secret.as_bytes();
    bytes.iter().zip(keystream(platform, rule, bytes.len())).map(|(b, k)| b ^ k).collect()
}

/// A sealed webhook secret opened.
pub fn unseal(platform: &[u8; 32], rule: &str, sealed: &[u8]) -> Option<String> {
    let bytes: Vec<u8> = sealed.iter().zip(keystream(platform, rule, sealed.len())).map(|(b, k)| b ^ k).collect();
    String::from_utf8(bytes).ok()
}

/// The message template filled from a subject's row: `{{column}}` becomes
/// the column's value (text as is, null as nothing), `{{ column }}` too.
pub fn render(template: &str, row: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                match row.get(name) {
                    Some(serde_json::Value::String(s)) => out.push_str(s),
                    Some(serde_json::Value::Null) | None => {}
                    Some(other) => out.push_str(&other.to_string()),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The column names a template refers to.
pub fn placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim().to_string());
        rest = &after[end + 2..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_from_the_row() {
        let row = serde_json::json!({"name": "张三", "due_date": "2027-01-05", "amount": 1200, "note": null});
        let row = row.as_object().expect("object");
        assert_eq!(
            render("{{name}}，您可于{{ due_date }}起申领养老金（{{amount}}元）{{note}}。", row),
            "张三，您可于2027-01-05起申领养老金（1200元）。"
        );
        assert_eq!(render("no {{unclosed", row), "no {{unclosed");
        assert_eq!(placeholders("{{name}} {{ due_date }} {{x"), vec!["name", "due_date"]);
    }

    #[test]
    fn sealed_secrets_open_only_with_the_platform_secret_and_rule() {
        let key = [7u8; 32];
        let sealed = seal(&key, "rule_1", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_ne!(sealed, b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(unseal(&key, "rule_1", &sealed).as_deref(), Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert_ne!(unseal(&[8u8; 32], "rule_1", &sealed).as_deref(), Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert_ne!(unseal(&key, "rule_2", &sealed).as_deref(), Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    }
}
