//! `gdx audit ...`: the audit trail from the command line. `verify` with
//! `--data-dir` checks an `audit.db` offline (the server may be stopped);
//! without it, it asks the server.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value;

use super::{Client, print_list, print_object};
use crate::config::{Config, ServeArgs};

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Audit records the auditor may see, oldest first.
    List {
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only principals of this department.
        #[arg(long)]
        department: Option<String>,
        /// Only records naming this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Only this action (query, request.approve, ...).
        #[arg(long)]
        action: Option<String>,
        /// From this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Records per page.
        #[arg(long)]
        limit: Option<usize>,
        /// Token of the next page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Recompute the hash chain and its signed checkpoints; exits non-zero,
    /// naming the first broken record, when they do not hold.
    Verify {
        /// Check `<DIR>/audit.db` offline instead of asking the server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The configuration file (for the platform secret's place).
        #[arg(long, env = "GDX_CONFIG")]
        config: Option<PathBuf>,
        /// The platform secret file [default: as gdx serve finds it].
        #[arg(long, env = "GDX_SECRET_KEY_FILE")]
        secret_key_file: Option<PathBuf>,
        /// A head hash noted earlier (e.g. kept off-site): the chain must still contain it.
        #[arg(long)]
        expect_head: Option<String>,
    },
}

/// Runs a `gdx audit` command; `false` when a verification failed.
pub async fn run(
    client: impl FnOnce() -> anyhow::Result<Client>,
    cmd: AuditCmd,
    as_json: bool,
) -> anyhow::Result<bool> {
    match cmd {
        AuditCmd::List { principal, department, dataset, action, from, to, limit, page_token } => {
            let mut q = Vec::new();
            for (k, v) in [
                ("principal", principal),
                ("department", department),
                ("dataset", dataset),
                ("action", action),
                ("from", from),
                ("to", to),
                ("page_token", page_token),
            ] {
                q.extend(v.map(|v| (k, v)));
            }
            q.extend(limit.map(|l| ("limit", l.to_string())));
            let v = client()?.get("/api/v1/audit", &q).await?;
            print_list(
                &v,
                &[
                    ("seq", "seq"),
                    ("time", "time"),
                    ("principal", "principal"),
                    ("department", "department"),
                    ("action", "action"),
                    ("outcome", "outcome"),
                    ("datasets", "datasets"),
                    ("rows", "rows"),
                    ("purpose", "purpose"),
                ],
                as_json,
            );
            Ok(true)
        }
        AuditCmd::Verify { data_dir, config, secret_key_file, expect_head } => {
            let report: Value = match data_dir {
                Some(dir) => {
                    let args =
                        ServeArgs { config, data_dir: Some(dir.clone()), secret_key_file, ..ServeArgs::default() };
                    let c = Config::load(&args)?;
                    let secret_path =
                        c.secret_key_file.clone().unwrap_or_else(|| crate::secret::default_path(None, &c.data_dir));
                    let secret = crate::secret::load(&secret_path, &c.data_dir)?;
                    let path = c.data_dir.join(crate::backup::AUDIT_DB);
                    let report = crate::audit::verify_file(&path, &secret, expect_head.as_deref())
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    serde_json::to_value(report)?
                }
                None => {
                    let q: Vec<(&str, String)> = expect_head.into_iter().map(|h| ("expect_head", h)).collect();
                    client()?.get("/api/v1/audit/verify", &q).await?
                }
            };
            let ok = report["ok"].as_bool() == Some(true);
            if as_json {
                print_object(&report, true);
            } else if ok {
                crate::out!(
                    "audit log holds: {} record(s), head {}",
                    report["records"],
                    report["head"].as_str().unwrap_or("-")
                );
            } else {
                eprintln!(
                    "audit log BROKEN at record {}: {}",
                    report["first_broken"].as_u64().map_or("-".to_string(), |s| s.to_string()),
                    report["problem"].as_str().unwrap_or("?")
                );
            }
            Ok(ok)
        }
    }
}
