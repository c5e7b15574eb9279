//! `gdx rule ...`: push rules from the command line, as their owner (a
//! service).

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Client, print_list, print_object};

/// Push rules.
#[derive(Debug, Subcommand)]
pub enum RuleCmd {
    /// Register a rule, from flags or from a `.toml`/`.json` definition (`--file`).
    Add(AddArgs),
    /// The caller's rules.
    List {
        /// Token of the next page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// One rule and where its evaluations stand.
    Show {
        /// The rule id.
        id: String,
    },
    /// Evaluate a rule now.
    Run {
        /// The rule id.
        id: String,
    },
    /// Delete a rule (its pending deliveries are cancelled).
    Delete {
        /// The rule id.
        id: String,
    },
    /// A rule's events, oldest first.
    Events {
        /// The rule id.
        id: String,
        /// Only events after this event id.
        #[arg(long)]
        after: Option<String>,
        /// Events to show at most.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The delivery of each of a rule's events.
    Deliveries {
        /// The rule id.
        id: String,
        /// pending, delivered, dead or cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Token of the next page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Queue a dead-lettered delivery again.
    Retry {
        /// The rule id.
        id: String,
        /// The event id.
        event: String,
    },
}

/// What `gdx rule add` registers.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// A definition file with the fields of `POST /api/v1/push/rules`; flags given as well override it.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A name, unique among the caller's rules.
    #[arg(long)]
    pub name: Option<String>,
    /// Governed SQL; each row names a subject.
    #[arg(long)]
    pub sql: Option<String>,
    /// The column naming the subject (resident ID, credit code).
    #[arg(long)]
    pub subject_column: Option<String>,
    /// The message, `{{column}}` filled from the subject's row.
    #[arg(long)]
    pub message: Option<String>,
    /// Evaluate after each commit of these datasets (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "schedule")]
    pub on_change: Option<Vec<String>>,
    /// Evaluate on a five-field cron schedule in Asia/Shanghai, e.g. `0 8 * * *`.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Where events are sent (without one they are only pulled).
    #[arg(long, requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    /// The webhook's signing secret (`whsec_<base64>` or any text).
    #[arg(long, env = "GDX_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Why the data is used.
    #[arg(long)]
    pub purpose: Option<String>,
    /// Do not push subjects that already match at the first evaluation.
    #[arg(long)]
    pub no_backfill: bool,
    /// Events per subject per day at most.
    #[arg(long)]
    pub max_per_subject: Option<u32>,
}

fn path(id: &str, action: &str) -> String {
    let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    format!("/api/v1/push/rules/{id}{action}")
}

/// The body of `POST /api/v1/push/rules`: the file's fields, then the flags given.
fn definition(args: AddArgs) -> anyhow::Result<Value> {
    let AddArgs {
        file,
        name,
        sql,
        subject_column,
        message,
        on_change,
        schedule,
        webhook_url,
        webhook_secret,
        purpose,
        no_backfill,
        max_per_subject,
    } = args;
    let webhook = webhook_url.map(|u| (u, webhook_secret));
    let mut body = match &file {
        Some(f) => super::read_definition(f)?,
        None => json!({}),
    };
    let Some(obj) = body.as_object_mut() else { bail!("the definition must be a table of fields") };
    let mut set = |k: &str, v: Value| {
        obj.insert(k.to_string(), v);
    };
    if let Some(v) = name {
        set("name", json!(v));
    }
    if let Some(v) = sql {
        set("sql", json!(v));
    }
    if let Some(v) = subject_column {
        set("subject_column", json!(v));
    }
    if let Some(v) = message {
        set("message", json!(v));
    }
    if let Some(v) = on_change {
        set("trigger", json!({ "on_change": v }));
    }
    if let Some(v) = schedule {
        set("trigger", json!({ "schedule": v }));
    }
    match webhook {
        Some((url, Some(secret))) => set("webhook", json!({ "url": url, "secret": secret })),
        Some((_, None)) => bail!("--webhook-url needs --webhook-secret (or GDX_WEBHOOK_SECRET)"),
        None => {}
    }
    if let Some(v) = purpose {
        set("purpose", json!(v));
    }
    if no_backfill {
        set("backfill", json!(false));
    }
    if let Some(v) = max_per_subject {
        set("max_per_subject", json!(v));
    }
    let missing: Vec<&str> = ["name", "sql", "subject_column", "trigger", "purpose"]
        .into_iter()
        .filter(|k| obj.get(*k).is_none_or(Value::is_null))
        .collect();
    if !missing.is_empty() {
        bail!(
            "a rule needs {} (flags --name, --sql, --subject-column, --on-change or --schedule, --purpose, or --file)",
            missing.join(", ")
        );
    }
    Ok(body)
}

/// Where a rule's trigger and last evaluation stand, in one line each.
fn summary(v: &Value) -> Vec<(String, String)> {
    let trigger = if let Some(d) = v["trigger"]["on_change"].as_array() {
        format!("on change of {}", d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
    } else {
        format!("schedule {}", v["trigger"]["schedule"].as_str().unwrap_or("?"))
    };
    let s = &v["state"];
    let last = match s["status"].as_str() {
        None => "not evaluated yet".to_string(),
        Some("failed") => format!("failed at {}: {}", s["evaluated_at"].as_str().unwrap_or("?"), s["error"]),
        Some(st) => format!(
            "{st} at {}: {} matching, {} event(s)",
            s["evaluated_at"].as_str().unwrap_or("?"),
            s["matched"],
            s["last_events"]
        ),
    };
    vec![("trigger".into(), trigger), ("last evaluation".into(), last)]
}

/// Runs a `gdx rule` command.
pub async fn run(client: &Client, cmd: RuleCmd, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        RuleCmd::Add(args) => {
            let body = definition(args)?;
            let v = client.post("/api/v1/push/rules", &body).await?;
            if as_json {
                print_object(&v, true);
            } else {
                let (_, trigger) = summary(&v).remove(0);
                crate::out!("rule {} registered ({trigger})", v["id"].as_str().unwrap_or("?"));
            }
        }
        RuleCmd::List { page_token } => {
            let q: Vec<(&str, String)> = page_token.map(|t| ("page_token", t)).into_iter().collect();
            let mut v = client.get("/api/v1/push/rules", &q).await?;
            if !as_json && let Some(items) = v["items"].as_array_mut() {
                for item in items.iter_mut() {
                    let lines = summary(item);
                    item["trigger_text"] = json!(lines[0].1);
                    item["last_text"] = json!(lines[1].1);
                }
            }
            print_list(
                &v,
                &[("id", "id"), ("name", "name"), ("trigger_text", "trigger"), ("last_text", "last evaluation")],
                as_json,
            );
        }
        RuleCmd::Show { id } => {
            let v = client.get(&path(&id, ""), &[]).await?;
            if as_json {
                print_object(&v, true);
            } else {
                let mut shown = serde_json::Map::new();
                for k in ["id", "name", "owner", "department", "purpose", "sql", "subject_column", "message"] {
                    shown.insert(k.to_string(), v[k].clone());
                }
                for (k, line) in summary(&v) {
                    shown.insert(k, json!(line));
                }
                shown.insert("webhook".into(), v["webhook_url"].clone());
                shown.insert("backfill".into(), v["backfill"].clone());
                shown.insert("max_per_subject".into(), v["max_per_subject"].clone());
                shown.insert("events in all".into(), v["state"]["events"].clone());
                print_object(&Value::Object(shown), false);
            }
        }
        RuleCmd::Run { id } => {
            let v = client.post(&path(&id, "/run"), &json!({})).await?;
            if as_json {
                print_object(&v, true);
            } else {
                let e = &v["evaluation"];
                crate::out!(
                    "rule {id}: {} matching, {} new or changed, {} event(s) written, {} held by max_per_subject, {} no longer matching",
                    e["matched"],
                    e["changed"],
                    e["events"],
                    e["held"],
                    e["gone"]
                );
            }
        }
        RuleCmd::Delete { id } => {
            client.call(Method::DELETE, &path(&id, ""), &[], None).await?;
            if !as_json {
                crate::out!("rule {id} deleted");
            }
        }
        RuleCmd::Events { id, after, limit } => {
            let mut q = Vec::new();
            q.extend(after.map(|a| ("after", a)));
            q.extend(limit.map(|l| ("limit", l.to_string())));
            let mut v = client.get(&path(&id, "/events"), &q).await?;
            if as_json {
                print_object(&v, true);
            } else {
                // The next page starts after the last event shown.
                let next = v.as_object_mut().and_then(|o| o.remove("next_page_token"));
                print_list(
                    &v,
                    &[
                        ("id", "event"),
                        ("subject", "subject"),
                        ("message", "message"),
                        ("delivery", "delivery"),
                        ("created_at", "at"),
                    ],
                    false,
                );
                if let Some(after) = next.as_ref().and_then(Value::as_str) {
                    crate::out!("(more: --after {after})");
                }
            }
        }
        RuleCmd::Deliveries { id, status, page_token } => {
            let mut q = Vec::new();
            q.extend(status.map(|s| ("status", s)));
            q.extend(page_token.map(|t| ("page_token", t)));
            let v = client.get(&path(&id, "/deliveries"), &q).await?;
            print_list(
                &v,
                &[
                    ("event", "event"),
                    ("state", "state"),
                    ("attempts", "attempts"),
                    ("last_status", "last status"),
                    ("last_error", "last error"),
                    ("next_attempt_at", "next attempt"),
                    ("delivered_at", "delivered"),
                ],
                as_json,
            );
        }
        RuleCmd::Retry { id, event } => {
            let ev: String = form_urlencoded::byte_serialize(event.as_bytes()).collect();
            let v = client.post(&path(&id, &format!("/deliveries/{ev}/retry")), &json!({})).await?;
            if as_json {
                print_object(&v, true);
            } else {
                crate::out!("delivery of {event} queued again");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> AddArgs {
        AddArgs {
            file: None,
            name: None,
            sql: None,
            subject_column: None,
            message: None,
            on_change: None,
            schedule: None,
            webhook_url: None,
            webhook_secret: None,
            purpose: None,
            no_backfill: false,
            max_per_subject: None,
        }
    }

    #[test]
    fn flags_override_the_file_and_a_missing_field_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("rule.toml");
        std::fs::write(
            &file,
            "name = \"r\"\nsql = \"SELECT 1 AS k\"\nsubject_column = \"k\"\npurpose = \"p\"\n\
             [trigger]\nschedule = \"0 8 * * *\"\n",
        )
        .expect("write");
        let body = definition(AddArgs {
            file: Some(file),
            name: Some("renamed".into()),
            on_change: Some(vec!["gongan.population".into()]),
            webhook_url: Some("https://svc.example/hook".into()),
            webhook_secret: Some("s3cret".into()),
            no_backfill: true,
            max_per_subject: Some(2),
            ..args()
        })
        .expect("definition");
        assert_eq!(
            body,
            json!({"name": "renamed", "sql": "SELECT 1 AS k", "subject_column": "k", "purpose": "p",
                   "trigger": {"on_change": ["gongan.population"]},
                   "webhook": {"url": "https://svc.example/hook", "secret": "s3cret"},
                   "backfill": false, "max_per_subject": 2})
        );
        let err = definition(AddArgs { name: Some("r".into()), ..args() }).expect_err("incomplete");
        assert!(err.to_string().contains("sql, subject_column, trigger, purpose"), "{err}");
        let err = definition(AddArgs { webhook_url: Some("https://svc.example/hook".into()), ..args() })
            .expect_err("no secret");
        assert!(err.to_string().contains("--webhook-secret"), "{err}");
    }
}
