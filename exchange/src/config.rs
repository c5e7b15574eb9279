//! Server configuration: one struct, filled from a TOML file, `GDX_*`
//! environment variables and command-line flags (in rising precedence).
//! `docs/gdx.example.toml` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Format of the log lines on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Everything `gdx serve` needs to know.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The data directory: `meta.db`, `audit.db`, `lake/`.
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The administrator's bearer token; when absent one is created in `<data_dir>/admin.token`.
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA whose client certificates are accepted (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (behind a
    /// TLS-terminating proxy on a closed network, say).
    pub insecure_http: bool,
    /// Let push rules target loopback and private addresses.
    pub webhook_allow_private: bool,
    /// Seconds a webhook receiver has to answer one delivery.
    pub webhook_timeout_secs: u64,
    /// Seconds before each retry of a failed delivery; once spent, the delivery is dead-lettered.
    pub webhook_retry_secs: Vec<u64>,
    /// Days push events and their deliveries are kept once settled (0: for ever).
    pub push_retention_days: u64,
    /// Departments whose auditors see every department's records.
    pub supervisor_departments: Vec<String>,
    /// The platform secret (keyed-hash masks, audit checkpoints), kept outside the data directory.
    pub secret_key_file: Option<PathBuf>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Largest upload a push accepts, in bytes.
    pub max_push_bytes: u64,
    /// Hours between scheduled lake maintenance runs (compaction and vacuum); 0 turns it off.
    pub maintenance_interval_hours: u64,
    /// Hours of history vacuum keeps: versions older than this can no longer be read.
    pub vacuum_retention_hours: u64,
    /// Memory one query may use, in bytes; past it the query fails with `resources_exhausted`.
    pub query_memory_bytes: u64,
    /// Seconds a query may run.
    pub query_timeout_secs: u64,
    /// Rows a query answer holds at most.
    pub query_max_rows: u64,
    /// A casbin route model replacing the shipped `policies/route_model.conf`.
    pub route_model: Option<PathBuf>,
    /// A route policy replacing the shipped `policies/route_policy.csv`.
    pub route_policy: Option<PathBuf>,
    /// A casbin data model replacing the shipped `policies/data_model.conf`.
    pub data_model: Option<PathBuf>,
    /// A default data policy replacing the shipped `policies/data_policy.csv`.
    pub data_policy: Option<PathBuf>,
    /// Holiday arrangement files (JSON, one per year) added to, or replacing
    /// a year of, the shipped calendar that deadlines are counted in.
    pub calendar_files: Vec<PathBuf>,
    /// Working days a provider has to answer a sharing request.
    pub request_due_working_days: u32,
    /// Working days a provider has to answer a data-quality feedback.
    pub feedback_due_working_days: u32,
    /// Seconds a client has to send a request's head, and that an idle
    /// keep-alive connection is kept open.
    pub header_timeout_secs: u64,
    /// Seconds a request body may go without a byte before the request is dropped.
    pub body_timeout_secs: u64,
    /// Per-principal limits (`[limits]`).
    pub limits: LimitSettings,
}

/// Per-principal limits: defaults for every principal, and overrides by principal id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Requests a second one principal may make, sustained; a burst of two
    /// seconds' worth passes at once. 0: no limit.
    pub requests_per_second: u64,
    /// SQL queries one principal may run at once. 0: no limit.
    pub concurrent_queries: usize,
    /// Distinct subjects (citizens, enterprises) one principal may look up in
    /// a day before the audit log raises an alert. 0: no alert.
    pub distinct_subjects_per_day: u64,
    /// Overrides by principal id (`[limits.principals.<id>]`).
    pub principals: std::collections::BTreeMap<String, PrincipalLimits>,
}

/// One principal's overrides of the default limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalLimits {
    /// Requests a second (0: no limit).
    pub requests_per_second: Option<u64>,
    /// Queries at once (0: no limit).
    pub concurrent_queries: Option<usize>,
    /// Distinct subjects a day before an alert (0: no alert).
    pub distinct_subjects_per_day: Option<u64>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 20_000,
            concurrent_queries: 4,
            distinct_subjects_per_day: 100_000,
            principals: Default::default(),
        }
    }
}

impl LimitSettings {
    /// The request rate of a principal.
    pub fn requests_per_second_of(&self, principal: &str) -> u64 {
        self.principals.get(principal).and_then(|p| p.requests_per_second).unwrap_or(self.requests_per_second)
    }

    /// How many queries a principal may run at once.
    pub fn concurrent_queries_of(&self, principal: &str) -> usize {
        self.principals.get(principal).and_then(|p| p.concurrent_queries).unwrap_or(self.concurrent_queries)
    }

    /// A principal's alert threshold of distinct subjects a day.
    pub fn distinct_subjects_per_day_of(&self, principal: &str) -> u64 {
        self.principals
            .get(principal)
            .and_then(|p| p.distinct_subjects_per_day)
            .unwrap_or(self.distinct_subjects_per_day)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./gdx-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            insecure_http: false,
            webhook_allow_private: false,
            webhook_timeout_secs: 10,
            webhook_retry_secs: vec![5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600],
            push_retention_days: 90,
            supervisor_departments: Vec::new(),
            secret_key_file: None,
            log_format: LogFormat::Text,
            max_push_bytes: 16 * 1024 * 1024 * 1024,
            maintenance_interval_hours: 24,
            vacuum_retention_hours: 7 * 24,
            query_memory_bytes: 512 * 1024 * 1024,
            query_timeout_secs: 300,
            query_max_rows: 10_000,
            route_model: None,
            route_policy: None,
            data_model: None,
            data_policy: None,
            calendar_files: Vec::new(),
            request_due_working_days: 10,
            feedback_due_working_days: 5,
            header_timeout_secs: 30,
            body_timeout_secs: 60,
            limits: LimitSettings::default(),
        }
    }
}

/// Flags of `gdx serve`; each also read from its `GDX_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/gdx.example.toml).
    #[arg(long, env = "GDX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./gdx-data].
    #[arg(long, env = "GDX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "GDX_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "GDX_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "GDX_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA of accepted client certificates.
    #[arg(long, env = "GDX_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback.
    #[arg(long, env = "GDX_INSECURE_HTTP", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_http: Option<bool>,
    /// Let push rules target loopback and private addresses.
    #[arg(long, env = "GDX_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: Option<bool>,
    /// Comma-separated departments whose auditors see everything.
    #[arg(long, env = "GDX_SUPERVISOR_DEPARTMENTS", value_delimiter = ',')]
    pub supervisor_departments: Option<Vec<String>>,
    /// The platform secret file.
    #[arg(long, env = "GDX_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "GDX_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Largest upload a push accepts, in bytes [default: 16 GiB].
    #[arg(long, env = "GDX_MAX_PUSH_BYTES")]
    pub max_push_bytes: Option<u64>,
    /// Hours between lake maintenance runs; 0 turns them off [default: 24].
    #[arg(long, env = "GDX_MAINTENANCE_INTERVAL_HOURS")]
    pub maintenance_interval_hours: Option<u64>,
    /// Hours of version history vacuum keeps [default: 168].
    #[arg(long, env = "GDX_VACUUM_RETENTION_HOURS")]
    pub vacuum_retention_hours: Option<u64>,
    /// Memory one query may use, in bytes [default: 512 MiB].
    #[arg(long, env = "GDX_QUERY_MEMORY_BYTES")]
    pub query_memory_bytes: Option<u64>,
    /// Seconds a query may run [default: 300].
    #[arg(long, env = "GDX_QUERY_TIMEOUT_SECS")]
    pub query_timeout_secs: Option<u64>,
    /// Rows a query answer holds at most [default: 10000].
    #[arg(long, env = "GDX_QUERY_MAX_ROWS")]
    pub query_max_rows: Option<u64>,
}

impl Config {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|e| Error::Config { message: format!("{}: {}", path.display(), e.message()) })
    }

    /// The configuration of `gdx serve`: file, then environment and flags.
    ///
    /// `GDX_ADMIN_TOKEN` is read from the environment only: a secret on a
    /// command line is visible to every user of the machine.
    pub fn load(args: &ServeArgs) -> Result<Self> {
        let mut c = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        // A flag (or its variable) overrides the file: same name on both sides.
        macro_rules! flag {
            ($($field:ident),+ => Some) => { $(if let Some(v) = &args.$field { c.$field = Some(v.clone()); })+ };
            ($($field:ident),+) => { $(if let Some(v) = &args.$field { c.$field = v.clone(); })+ };
        }
        flag!(
            data_dir,
            listen,
            insecure_http,
            webhook_allow_private,
            log_format,
            max_push_bytes,
            maintenance_interval_hours,
            vacuum_retention_hours,
            query_memory_bytes,
            query_timeout_secs,
            query_max_rows
        );
        flag!(tls_cert, tls_key, client_ca, secret_key_file => Some);
        if let Some(v) = &args.supervisor_departments {
            c.supervisor_departments = v.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        if c.secret_key_file.is_none() {
            c.secret_key_file = Some(crate::secret::default_path(args.config.as_deref(), &c.data_dir));
        }
        if let Ok(token) = std::env::var("GDX_ADMIN_TOKEN")
            && !token.trim().is_empty()
        {
            c.admin_token = Some(token.trim().to_string());
        }
        c.check()?;
        Ok(c)
    }

    /// Checks settings that do not depend on the file system.
    pub fn check(&self) -> Result<()> {
        if let Some(t) = &self.admin_token
            && t.len() < 16
        {
            return Err(Error::Config { message: "GDX_ADMIN_TOKEN must be at least 16 characters".into() });
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Config {
                    message: "tls_cert and tls_key go together: give both, or neither".into(),
                });
            }
            (None, None) if self.client_ca.is_some() => {
                return Err(Error::Config {
                    message: "client_ca needs HTTPS: give tls_cert and tls_key as well".into(),
                });
            }
            (None, None) if !self.listen.ip().is_loopback() && !self.insecure_http => {
                return Err(Error::Config {
                    message: format!(
                        "refusing plain HTTP on {}, which is not a loopback address: give tls_cert and tls_key \
                         (gdx certs init makes them), or --insecure-http behind a TLS-terminating proxy",
                        self.listen
                    ),
                });
            }
            _ => {}
        }
        if self.webhook_retry_secs.len() > 20 || self.webhook_retry_secs.iter().any(|s| *s > 7 * 24 * 3600) {
            return Err(Error::Config {
                message: "webhook_retry_secs holds at most 20 delays of at most a week each".into(),
            });
        }
        if self.push_retention_days > 36_500 {
            return Err(Error::Config {
                message: "push_retention_days must be at most 36500 (0 keeps events for ever)".into(),
            });
        }
        for (key, secs) in
            [("header_timeout_secs", self.header_timeout_secs), ("body_timeout_secs", self.body_timeout_secs)]
        {
            if !(1..=3600).contains(&secs) {
                return Err(Error::Config { message: format!("{key} must be between 1 and 3600") });
            }
        }
        if !(1..=300).contains(&self.webhook_timeout_secs) {
            return Err(Error::Config { message: "webhook_timeout_secs must be between 1 and 300".into() });
        }
        for (key, days) in [
            ("request_due_working_days", self.request_due_working_days),
            ("feedback_due_working_days", self.feedback_due_working_days),
        ] {
            if !(1..=250).contains(&days) {
                return Err(Error::Config { message: format!("{key} must be between 1 and 250") });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../docs/gdx.example.toml");
        let c: Config = toml::from_str(text).expect("docs/gdx.example.toml parses");
        assert_eq!(c.listen.port(), 8080);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("lisen = \"127.0.0.1:1\"").is_err());
    }

    #[test]
    fn plain_http_beyond_loopback_and_half_tls_settings_are_refused() {
        let with = |text: &str| toml::from_str::<Config>(text).expect("parses").check();
        assert!(with("").is_ok());
        assert!(with("listen = \"[::1]:8080\"").is_ok());
        let open = with("listen = \"0.0.0.0:8080\"").expect_err("plain HTTP on all addresses").to_string();
        assert!(open.contains("--insecure-http"), "{open}");
        assert!(with("listen = \"0.0.0.0:8080\"\ninsecure_http = true").is_ok());
        assert!(with("listen = \"0.0.0.0:8080\"\ntls_cert = \"s.pem\"\ntls_key = \"s.key\"").is_ok());
        assert!(with("tls_cert = \"s.pem\"").is_err());
        assert!(with("tls_key = \"s.key\"").is_err());
        assert!(with("client_ca = \"ca.pem\"").is_err());
    }

    #[test]
    fn limits_have_defaults_and_overrides_by_principal() {
        let c: Config = toml::from_str(
            "[limits]\nrequests_per_second = 100\n[limits.principals.svc]\nrequests_per_second = 0\nconcurrent_queries = 9\n",
        )
        .expect("parses");
        assert_eq!(c.limits.requests_per_second_of("svc"), 0);
        assert_eq!(c.limits.requests_per_second_of("other"), 100);
        assert_eq!(c.limits.concurrent_queries_of("svc"), 9);
        assert_eq!(c.limits.concurrent_queries_of("other"), 4);
        assert_eq!(c.limits.distinct_subjects_per_day_of("svc"), 100_000);
        assert!(toml::from_str::<Config>("[limits.principals.svc]\nrps = 1\n").is_err());
    }
}
