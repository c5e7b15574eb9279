//! `gdx request ...` and `gdx feedback ...`: sharing requests and data-quality
//! feedback from the command line.

use clap::Subcommand;
use serde_json::{Value, json};

use super::{Client, print_list, print_object};

/// Sharing requests.
#[derive(Debug, Subcommand)]
pub enum RequestCmd {
    /// Ask for a dataset (a conditional one, or personal columns of an unconditional one in clear).
    Create {
        /// `{department}.{name}`.
        dataset: String,
        /// What the data is for.
        #[arg(long)]
        purpose: String,
        /// Only these columns (comma-separated).
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Personal columns needed in clear (comma-separated).
        #[arg(long, value_delimiter = ',')]
        unmask: Vec<String>,
        /// When access should end (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Requests the department made or received.
    List {
        /// provider (the inbox) or consumer (the department's own requests).
        #[arg(long)]
        role: Option<String>,
        /// pending, approved or rejected.
        #[arg(long)]
        status: Option<String>,
        /// Only requests still pending after their deadline.
        #[arg(long)]
        overdue: bool,
        /// Token of the next page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// One request.
    Show {
        /// The request id.
        id: String,
    },
    /// Approve a request, possibly narrower than asked.
    Approve {
        /// The request id.
        id: String,
        /// Fewer columns than asked (comma-separated).
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Fewer personal columns in clear than asked (comma-separated; empty for none).
        #[arg(long, value_delimiter = ',')]
        unmask: Option<Vec<String>>,
        /// A row filter, e.g. `county_code = '441402'`.
        #[arg(long)]
        row_filter: Option<String>,
        /// An earlier end than asked (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
        /// Rows a day the department may receive under the grant.
        #[arg(long)]
        rows_per_day: Option<u64>,
    },
    /// Reject a request.
    Reject {
        /// The request id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// Data-quality feedback.
#[derive(Debug, Subcommand)]
pub enum FeedbackCmd {
    /// Flag a record of a dataset.
    Create {
        /// `{department}.{name}`.
        dataset: String,
        /// The record's key.
        #[arg(long)]
        key: String,
        /// The column in doubt.
        #[arg(long)]
        column: Option<String>,
        /// What seems wrong.
        #[arg(long)]
        comment: String,
    },
    /// Feedback the department gave or received.
    List {
        /// provider or consumer.
        #[arg(long)]
        role: Option<String>,
        /// open, corrected or rejected.
        #[arg(long)]
        status: Option<String>,
        /// Only feedback still open after its deadline.
        #[arg(long)]
        overdue: bool,
    },
    /// Answer a feedback: corrected in a version, or rejected with a reason.
    Resolve {
        /// The feedback id.
        id: String,
        /// corrected or rejected.
        #[arg(long)]
        outcome: String,
        /// The version that corrected the record.
        #[arg(long)]
        version: Option<i64>,
        /// Why it was rejected.
        #[arg(long)]
        reason: Option<String>,
    },
}

const REQUEST_COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("dataset", "dataset"),
    ("department", "asked by"),
    ("purpose", "purpose"),
    ("status", "status"),
    ("due_on", "due"),
    ("overdue", "overdue"),
    ("grant_id", "grant"),
];

/// Drops absent values so the server sees only what was given.
fn body(pairs: &[(&str, Value)]) -> Value {
    Value::Object(pairs.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn path(id: &str, action: &str) -> String {
    let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    format!("/api/v1/sharing-requests/{id}{action}")
}

fn list_query(role: Option<String>, status: Option<String>, overdue: bool) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    q.extend(role.map(|r| ("role", r)));
    q.extend(status.map(|s| ("status", s)));
    if overdue {
        q.push(("overdue", "true".to_string()));
    }
    q
}

/// Runs a `gdx request` command.
pub async fn request(client: &Client, cmd: RequestCmd, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        RequestCmd::Create { dataset, purpose, columns, unmask, expires_at } => {
            let v = client
                .post(
                    "/api/v1/sharing-requests",
                    &body(&[
                        ("dataset", json!(dataset)),
                        ("purpose", json!(purpose)),
                        ("columns", json!(columns)),
                        ("unmask", json!(unmask)),
                        ("expires_at", json!(expires_at)),
                    ]),
                )
                .await?;
            if as_json {
                print_object(&v, true);
            } else {
                crate::out!(
                    "request {} made; due {} ({})",
                    v["id"].as_str().unwrap_or("?"),
                    v["due_on"].as_str().unwrap_or("?"),
                    v["due_explanation"].as_str().unwrap_or("")
                );
            }
        }
        RequestCmd::List { role, status, overdue, page_token } => {
            let mut q = list_query(role, status, overdue);
            q.extend(page_token.map(|t| ("page_token", t)));
            let v = client.get("/api/v1/sharing-requests", &q).await?;
            print_list(&v, REQUEST_COLUMNS, as_json);
        }
        RequestCmd::Show { id } => print_object(&client.get(&path(&id, ""), &[]).await?, as_json),
        RequestCmd::Approve { id, columns, unmask, row_filter, expires_at, rows_per_day } => {
            let v = client
                .post(
                    &path(&id, "/approve"),
                    &body(&[
                        ("columns", json!(columns)),
                        ("unmask", json!(unmask.map(|u| u.into_iter().filter(|c| !c.is_empty()).collect::<Vec<_>>()))),
                        ("row_filter", json!(row_filter)),
                        ("expires_at", json!(expires_at)),
                        ("rows_per_day", json!(rows_per_day)),
                    ]),
                )
                .await?;
            if as_json {
                print_object(&v, true);
            } else {
                crate::out!("request {id} approved; grant {}", v["grant_id"].as_str().unwrap_or("?"));
            }
        }
        RequestCmd::Reject { id, reason } => {
            let v = client.post(&path(&id, "/reject"), &json!({ "reason": reason })).await?;
            if as_json {
                print_object(&v, true);
            } else {
                crate::out!("request {id} rejected");
            }
        }
    }
    Ok(())
}

/// Runs a `gdx feedback` command.
pub async fn feedback(client: &Client, cmd: FeedbackCmd, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        FeedbackCmd::Create { dataset, key, column, comment } => {
            let v = client
                .post(
                    "/api/v1/feedback",
                    &body(&[
                        ("dataset", json!(dataset)),
                        ("key", json!(key)),
                        ("column", json!(column)),
                        ("comment", json!(comment)),
                    ]),
                )
                .await?;
            if as_json {
                print_object(&v, true);
            } else {
                crate::out!(
                    "feedback {} given; due {}",
                    v["id"].as_str().unwrap_or("?"),
                    v["due_on"].as_str().unwrap_or("?")
                );
            }
        }
        FeedbackCmd::List { role, status, overdue } => {
            let v = client.get("/api/v1/feedback", &list_query(role, status, overdue)).await?;
            print_list(
                &v,
                &[
                    ("id", "id"),
                    ("dataset", "dataset"),
                    ("department", "from"),
                    ("key", "key"),
                    ("column", "column"),
                    ("comment", "comment"),
                    ("status", "status"),
                    ("due_on", "due"),
                    ("version", "version"),
                    ("reason", "reason"),
                ],
                as_json,
            );
        }
        FeedbackCmd::Resolve { id, outcome, version, reason } => {
            let id_enc: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
            let v = client
                .post(
                    &format!("/api/v1/feedback/{id_enc}/resolve"),
                    &body(&[("outcome", json!(outcome)), ("version", json!(version)), ("reason", json!(reason))]),
                )
                .await?;
            if as_json {
                print_object(&v, true);
            } else {
                crate::out!("feedback {id} resolved: {}", v["status"].as_str().unwrap_or("?"));
            }
        }
    }
    Ok(())
}
