//! `gdx`: run the GDX server, administer it, and use it from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gdx_exchange::cli::{self, Client, print_list, print_object};
use gdx_exchange::config::{Config, LogFormat, ServeArgs};
use serde_json::{Value, json};

/// jemalloc: see the workspace's Cargo.toml and docs/performance.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "gdx", version, about = "GDX: the government data-sharing exchange")]
struct Cli {
    /// Server URL for client commands.
    #[arg(long, global = true, env = "GDX_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token for client commands.
    #[arg(long, global = true, env = "GDX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    tls: cli::ClientTls,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run a demo city: departments, principals, catalogued synthetic datasets, and a quickstart.
    Demo(gdx_exchange::demo::DemoArgs),
    /// Show who the token belongs to.
    Me,
    /// Departments.
    #[command(subcommand)]
    Department(DepartmentCmd),
    /// Principals (users and services).
    #[command(subcommand)]
    Principal(PrincipalCmd),
    /// Bearer tokens, and client certificates standing for principals (mutual TLS).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Certificates for HTTPS and mutual TLS.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// The dataset catalogue.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// A dataset's masks and row filters (stewards of its department).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Grants in force and past: list them, revoke one (stewards of the providing department).
    #[command(subcommand)]
    Grant(GrantCmd),
    /// Sharing requests: ask for a dataset; answer requests (stewards of the providing department).
    #[command(subcommand)]
    Request(gdx_exchange::cli::work::RequestCmd),
    /// Data-quality feedback: flag a record; resolve feedback (stewards of the providing department).
    #[command(subcommand)]
    Feedback(gdx_exchange::cli::work::FeedbackCmd),
    /// Fetch records by key (services; the provider's stewards): `KEY`, or `col=value,col2=value` for a composite key.
    Get {
        /// `{department}.{name}`.
        dataset: String,
        /// One or more keys.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Read this version instead of the latest.
        #[arg(long)]
        as_of: Option<i64>,
    },
    /// Verify a record without seeing it: exits 0 when it exists and every field matches.
    Verify {
        /// `{department}.{name}`.
        dataset: String,
        /// The key.
        key: String,
        /// `column=value` to check.
        #[arg(required = true)]
        fields: Vec<String>,
    },
    /// The audit trail: list records (auditors), verify the hash chain (offline with --data-dir).
    #[command(subcommand)]
    Audit(gdx_exchange::cli::audit::AuditCmd),
    /// Push rules: governed SQL whose new matches are pushed to a webhook (their owner).
    #[command(subcommand)]
    Rule(gdx_exchange::cli::rule::RuleCmd),
    /// Webhooks as GDX sends them: check a received request's signature (for receivers).
    #[command(subcommand)]
    Webhook(WebhookCmd),
    /// Run one governed SQL query over what the token may read.
    Sql {
        /// The query, e.g. `SELECT county_code, count(*) FROM gongan.population GROUP BY 1`.
        query: String,
        /// Why the data is read.
        #[arg(long)]
        purpose: Option<String>,
        /// Rows to return at most.
        #[arg(long)]
        limit: Option<usize>,
        /// table (the default), json, csv, or arrow (an Arrow IPC stream, for piping to a file).
        #[arg(long, value_enum, default_value_t = SqlFormat::Table)]
        format: SqlFormat,
    },
    /// Push a file as a new version of a dataset (stewards of its department).
    Push {
        /// `{department}.{name}`.
        dataset: String,
        /// The file: .csv, .ndjson/.jsonl, .parquet or .arrow (Arrow IPC stream).
        file: PathBuf,
        /// append, replace or upsert (merge on the primary key).
        #[arg(long, default_value = "append")]
        mode: String,
        /// Format when the extension does not tell: csv, csv-gbk, csv-gb18030, ndjson, parquet, arrow.
        #[arg(long)]
        format: Option<String>,
        /// reject (commit nothing if any row is bad) or skip (commit the valid rows, keep the rest aside).
        #[arg(long, default_value = "reject")]
        on_error: String,
        /// Key that makes a retry return the first result instead of committing again.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Write realistic synthetic Meizhou data (CSV or Parquet), deterministic for a seed.
    Datagen {
        /// What to generate.
        #[arg(value_enum)]
        kind: gdx_exchange::datagen::Kind,
        /// Rows to write.
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        /// Seed of every value.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Size of the population other kinds refer to (legal representatives, the insured).
        #[arg(long, default_value_t = 100_000)]
        people: u64,
        /// Number of enterprises licences and employers refer to.
        #[arg(long, default_value_t = 10_000)]
        enterprises: u64,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: gdx_exchange::datagen::OutputFormat,
        /// Output file.
        #[arg(long, required_unless_present = "definition")]
        out: Option<PathBuf>,
        /// Print the kind's catalogue entry for this department (for `gdx dataset register`) instead of data.
        #[arg(long, value_name = "DEPARTMENT")]
        definition: Option<String>,
    },
    /// Back up a data directory (also while the server runs).
    Backup {
        /// The data directory.
        #[arg(long, env = "GDX_DATA_DIR", default_value = "./gdx-data")]
        data_dir: PathBuf,
        /// The archive to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into a data directory (the server must be stopped).
    Restore {
        /// The data directory to restore into.
        #[arg(long, env = "GDX_DATA_DIR", default_value = "./gdx-data")]
        data_dir: PathBuf,
        /// The archive written by `gdx backup`.
        #[arg(long)]
        from: PathBuf,
        /// Replace an existing data directory (it is kept aside, not deleted).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DepartmentCmd {
    /// Register a department (admin).
    Add {
        /// Identifier, e.g. `gongan`.
        id: String,
        /// Display name, e.g. `梅州市公安局`.
        #[arg(long)]
        name: String,
        /// Organisation code or unified social credit code.
        #[arg(long)]
        org_code: Option<String>,
        /// Administrative division code (6 or 12 digits).
        #[arg(long)]
        region: Option<String>,
        /// Parent department.
        #[arg(long)]
        parent: Option<String>,
    },
    /// List departments.
    List {
        /// Items per page.
        #[arg(long)]
        limit: Option<usize>,
        /// Token of the page to show.
        #[arg(long)]
        page_token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PrincipalCmd {
    /// Create a principal and print its first token (admin).
    Add {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Department.
        #[arg(long)]
        department: String,
        /// Role (repeat or comma-separate): admin, steward, analyst, service, auditor.
        #[arg(long = "role", value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// user or service.
        #[arg(long, default_value = "user")]
        kind: String,
        /// Identifier (generated when absent).
        #[arg(long)]
        id: Option<String>,
    },
    /// List principals (admin).
    List {
        /// Only this department.
        #[arg(long)]
        department: Option<String>,
    },
    /// Change roles, disable or enable a principal (admin).
    Update {
        /// Principal id.
        id: String,
        /// New roles (repeat or comma-separate).
        #[arg(long = "role", value_delimiter = ',')]
        roles: Option<Vec<String>>,
        /// Disable the principal.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Enable the principal.
        #[arg(long)]
        enable: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Issue a token to a principal and print it (admin).
    Create {
        /// Principal id.
        principal: String,
        /// Expiry (RFC 3339, e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Register a client certificate that authenticates as a principal over mutual TLS (admin).
    Cert {
        /// Principal id.
        principal: String,
        /// The certificate (PEM): that one certificate, by its fingerprint.
        #[arg(long, conflicts_with_all = ["fingerprint", "subject"], required_unless_present_any = ["fingerprint", "subject"])]
        cert: Option<PathBuf>,
        /// Its SHA-256 fingerprint (hex).
        #[arg(long, conflicts_with = "subject")]
        fingerprint: Option<String>,
        /// Any certificate of the client CA whose subject common name is this.
        #[arg(long)]
        subject: Option<String>,
        /// Expiry (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Revoke a token or a certificate binding (admin).
    Revoke {
        /// Token id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCmd {
    /// Create a local CA, a server certificate and client certificates.
    Init {
        /// Directory to write ca.pem, ca.key, server.pem, server.key and NAME.pem, NAME.key into.
        #[arg(long)]
        out: PathBuf,
        /// Names of the server: DNS names and IP addresses (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        names: Vec<String>,
        /// Client certificates for these names, their subject common names
        /// (`--client a b`, `--client a,b` or `--client a --client b`).
        #[arg(long = "client", num_args = 1.., value_delimiter = ',')]
        clients: Vec<String>,
        /// Replace existing files (a new CA too).
        #[arg(long)]
        force: bool,
    },
    /// Issue one more client certificate from the CA that `init` made.
    Client {
        /// The directory `init` wrote (ca.pem, ca.key); NAME.pem and NAME.key go there too.
        #[arg(long)]
        dir: PathBuf,
        /// The client's name: its subject common name and file names.
        name: String,
        /// Days it is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u16).range(1..=3650))]
        days: u16,
    },
}

#[derive(Debug, Subcommand)]
enum DatasetCmd {
    /// Register a dataset from a .toml or .json definition.
    Register {
        /// The definition file.
        file: PathBuf,
    },
    /// List the catalogue.
    List {
        #[command(flatten)]
        filters: Filters,
    },
    /// Show one dataset.
    Show {
        /// `{department}.{name}`.
        id: String,
    },
    /// Compact small files and delete files no retained version needs (its steward, or an admin).
    Maintain {
        /// `{department}.{name}`.
        id: String,
        /// Skip compaction.
        #[arg(long)]
        no_optimize: bool,
        /// Skip vacuum.
        #[arg(long)]
        no_vacuum: bool,
        /// Hours of history vacuum keeps (default: the server's setting).
        #[arg(long)]
        retention_hours: Option<u64>,
    },
    /// The committed versions of a dataset, newest first.
    Versions {
        /// `{department}.{name}`.
        id: String,
    },
    /// Search titles, descriptions and column titles (Chinese works).
    Search {
        /// Words to find.
        query: String,
        #[command(flatten)]
        filters: Filters,
    },
}

/// Output formats of `gdx sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SqlFormat {
    /// An aligned table.
    Table,
    /// The JSON answer.
    Json,
    /// CSV with a header row.
    Csv,
    /// An Arrow IPC stream.
    Arrow,
}

#[derive(Debug, Subcommand)]
enum WebhookCmd {
    /// Check the Standard Webhooks signature of a received request; exits 0
    /// when it is valid and recent, 1 otherwise.
    Verify {
        /// The rule's webhook secret (`whsec_<base64>` or plain text).
        #[arg(long, env = "GDX_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// The `webhook-id` header.
        #[arg(long)]
        id: String,
        /// The `webhook-timestamp` header (Unix seconds).
        #[arg(long)]
        timestamp: String,
        /// The `webhook-signature` header (one or more `v1,<base64>`).
        #[arg(long)]
        signature: String,
        /// The request body exactly as received (standard input when absent or `-`).
        body: Option<PathBuf>,
        /// How far the timestamp may be from now, in seconds.
        #[arg(long, default_value_t = 300)]
        tolerance_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
enum GrantCmd {
    /// The grants the token may see, newest first.
    List {
        /// Only grants of this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Only grants to this department.
        #[arg(long)]
        department: Option<String>,
    },
    /// Revoke a grant: the department loses what it granted at once.
    Revoke {
        /// The grant id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Show the masks and row filters.
    Show {
        /// `{department}.{name}`.
        id: String,
    },
    /// Replace them from a .toml or .json file (`masks = [...]`, `row_filters = [...]`).
    Set {
        /// `{department}.{name}`.
        id: String,
        /// The policy file.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Filters {
    /// basic, thematic or department.
    #[arg(long)]
    classification: Option<String>,
    /// Provider department.
    #[arg(long)]
    department: Option<String>,
    /// unconditional, conditional or none.
    #[arg(long)]
    sharing: Option<String>,
    /// active (default), retired or all.
    #[arg(long)]
    status: Option<String>,
    /// Items per page.
    #[arg(long)]
    limit: Option<usize>,
    /// Token of the page to show.
    #[arg(long)]
    page_token: Option<String>,
}

impl Filters {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let pairs = [
            ("classification", &self.classification),
            ("department", &self.department),
            ("sharing", &self.sharing),
            ("status", &self.status),
            ("page_token", &self.page_token),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        q
    }
}

const DATASET_COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("title", "title"),
    ("classification", "classification"),
    ("sharing", "sharing"),
    ("update_cycle", "update"),
    ("status", "status"),
    ("access", "access"),
];

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GDX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,buoyant_kernel=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    gdx_exchange::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = || Client::with_tls(&cli.url, cli.token.clone(), &cli.tls);
    let json = cli.json;
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(&args)?;
            init_logging(config.log_format);
            let app = gdx_exchange::App::start(config).await?;
            if let Some(f) = app.admin_token_file() {
                eprintln!("gdx: serving on {}; the administrator token is in {}", app.url(), f.display());
            } else {
                eprintln!("gdx: serving on {}", app.url());
            }
            app.run_until_signal().await?;
        }
        Command::Demo(args) => {
            init_logging(LogFormat::Text);
            gdx_exchange::demo::run(args).await?;
        }
        Command::Me => {
            let v = client()?.get("/api/v1/me", &[]).await?;
            if json {
                print_object(&v, true);
            } else {
                let p = &v["principal"];
                gdx_exchange::out!(
                    "principal:  {} ({}, {})",
                    p["id"].as_str().unwrap_or("?"),
                    p["name"].as_str().unwrap_or(""),
                    p["kind"].as_str().unwrap_or("")
                );
                let dep = &v["department"];
                match dep["id"].as_str() {
                    Some(id) => gdx_exchange::out!("department: {id} ({})", dep["name"].as_str().unwrap_or("")),
                    None => gdx_exchange::out!("department: (none)"),
                }
                let roles: Vec<&str> =
                    v["roles"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                gdx_exchange::out!("roles:      {}", roles.join(", "));
            }
        }
        Command::Department(DepartmentCmd::Add { id, name, org_code, region, parent }) => {
            let body = json!({"id": id, "name": name, "org_code": org_code, "region": region, "parent": parent});
            print_object(&client()?.post("/api/v1/departments", &body).await?, json);
        }
        Command::Department(DepartmentCmd::List { limit, page_token }) => {
            let mut q = Vec::new();
            if let Some(l) = limit {
                q.push(("limit", l.to_string()));
            }
            if let Some(t) = page_token {
                q.push(("page_token", t));
            }
            let v = client()?.get("/api/v1/departments", &q).await?;
            print_list(
                &v,
                &[("id", "id"), ("name", "name"), ("org_code", "org code"), ("region", "region"), ("parent", "parent")],
                json,
            );
        }
        Command::Principal(PrincipalCmd::Add { name, department, roles, kind, id }) => {
            let body = json!({"name": name, "department": department, "roles": roles, "kind": kind, "id": id});
            let v = client()?.post("/api/v1/principals", &body).await?;
            if json {
                print_object(&v, true);
            } else {
                gdx_exchange::out!("principal {} created", v["id"].as_str().unwrap_or("?"));
                gdx_exchange::out!("token (shown once, keep it safe): {}", v["token"].as_str().unwrap_or("?"));
            }
        }
        Command::Principal(PrincipalCmd::List { department }) => {
            let q: Vec<_> = department.map(|d| ("department", d)).into_iter().collect();
            let v = client()?.get("/api/v1/principals", &q).await?;
            print_list(
                &v,
                &[
                    ("id", "id"),
                    ("name", "name"),
                    ("department", "department"),
                    ("kind", "kind"),
                    ("roles", "roles"),
                    ("disabled", "disabled"),
                ],
                json,
            );
        }
        Command::Principal(PrincipalCmd::Update { id, roles, disable, enable }) => {
            let mut body = serde_json::Map::new();
            if let Some(r) = roles {
                body.insert("roles".into(), json!(r));
            }
            if disable || enable {
                body.insert("disabled".into(), json!(disable));
            }
            let v = client()?
                .call(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/principals/{}", enc(&id)),
                    &[],
                    Some(&Value::Object(body)),
                )
                .await?;
            print_object(&v, json);
        }
        Command::Token(TokenCmd::Create { principal, expires_at }) => {
            let v = client()?
                .post(&format!("/api/v1/principals/{}/tokens", enc(&principal)), &json!({"expires_at": expires_at}))
                .await?;
            if json {
                print_object(&v, true);
            } else {
                gdx_exchange::out!("token {} issued to {}", v["id"].as_str().unwrap_or("?"), principal);
                gdx_exchange::out!("token (shown once, keep it safe): {}", v["token"].as_str().unwrap_or("?"));
            }
        }
        Command::Grant(GrantCmd::List { dataset, department }) => {
            let mut q = Vec::new();
            q.extend(dataset.map(|d| ("dataset", d)));
            q.extend(department.map(|d| ("department", d)));
            let v = client()?.get("/api/v1/grants", &q).await?;
            let columns = [
                ("id", "id"),
                ("dataset", "dataset"),
                ("department", "department"),
                ("columns", "columns"),
                ("unmask", "unmask"),
                ("row_filter", "row filter"),
                ("expires_at", "expires"),
                ("revoked_at", "revoked"),
            ];
            if json {
                print_object(&v, true);
            } else {
                print_list(&json!({"items": v}), &columns, false);
            }
        }
        Command::Request(cmd) => gdx_exchange::cli::work::request(&client()?, cmd, json).await?,
        Command::Feedback(cmd) => gdx_exchange::cli::work::feedback(&client()?, cmd, json).await?,
        Command::Rule(cmd) => gdx_exchange::cli::rule::run(&client()?, cmd, json).await?,
        Command::Get { dataset, keys, as_of } => {
            gdx_exchange::cli::records::get(&client()?, &dataset, &keys, as_of, json).await?
        }
        Command::Verify { dataset, key, fields } => {
            if !gdx_exchange::cli::records::verify(&client()?, &dataset, &key, &fields, json).await? {
                anyhow::bail!("the record does not match");
            }
        }
        Command::Webhook(WebhookCmd::Verify { secret, id, timestamp, signature, body, tolerance_secs }) => {
            use gdx_exchange::webhook;
            let body = match body.as_deref() {
                Some(path) if path != Path::new("-") => {
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
                }
                _ => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading standard input")?;
                    buf
                }
            };
            let secret = webhook::Secret::parse(&secret)?;
            let now = chrono::Utc::now().timestamp();
            let tolerance = std::time::Duration::from_secs(tolerance_secs);
            match webhook::verify(&secret, &id, &timestamp, &body, &signature, now, tolerance) {
                Ok(()) if json => print_object(&json!({"valid": true}), true),
                Ok(()) => gdx_exchange::out!("signature valid"),
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        Command::Audit(cmd) => {
            if !gdx_exchange::cli::audit::run(client, cmd, json).await? {
                anyhow::bail!("the audit log does not verify");
            }
        }
        Command::Grant(GrantCmd::Revoke { id }) => {
            client()?.call(reqwest::Method::DELETE, &format!("/api/v1/grants/{}", enc(&id)), &[], None).await?;
            if !json {
                gdx_exchange::out!("grant {id} revoked");
            }
        }
        Command::Token(TokenCmd::Cert { principal, cert, fingerprint, subject, expires_at }) => {
            let fingerprint = match cert {
                Some(path) => Some(gdx_exchange::certs::fingerprint_of(&path)?),
                None => fingerprint,
            };
            let v = client()?
                .post(
                    &format!("/api/v1/principals/{}/certificates", enc(&principal)),
                    &json!({"fingerprint": fingerprint, "subject": subject, "expires_at": expires_at}),
                )
                .await?;
            if json {
                print_object(&v, true);
            } else {
                gdx_exchange::out!(
                    "{} now authenticates as {} (credential {}; gdx token revoke {} ends it)",
                    v["certificate"].as_str().unwrap_or("?"),
                    principal,
                    v["id"].as_str().unwrap_or("?"),
                    v["id"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Certs(CertsCmd::Init { out, names, clients, force }) => {
            let issued = gdx_exchange::certs::init(&out, &names, &clients, force)?;
            if json {
                let clients: Vec<Value> = issued
                    .clients
                    .iter()
                    .map(|(n, c, k, f)| json!({"name": n, "cert": c, "key": k, "fingerprint": f}))
                    .collect();
                print_object(
                    &json!({"ca": issued.ca, "server_cert": issued.server.0, "server_key": issued.server.1, "clients": clients}),
                    true,
                );
            } else {
                gdx_exchange::out!("CA certificate: {} (its key: ca.key, keep it offline)", issued.ca.display());
                gdx_exchange::out!(
                    "server certificate for {}: {} and {}",
                    names.join(", "),
                    issued.server.0.display(),
                    issued.server.1.display()
                );
                for (name, cert, key, fp) in &issued.clients {
                    gdx_exchange::out!("client {name}: {} and {} (sha256 {fp})", cert.display(), key.display());
                }
                gdx_exchange::out!(
                    "serve with: gdx serve --tls-cert {} --tls-key {} --client-ca {}",
                    issued.server.0.display(),
                    issued.server.1.display(),
                    issued.ca.display()
                );
                if let Some((name, ..)) = issued.clients.first() {
                    gdx_exchange::out!("bind a client to a principal: gdx token cert PRINCIPAL --subject {name}");
                }
            }
        }
        Command::Certs(CertsCmd::Client { dir, name, days }) => {
            let now = chrono::Utc::now();
            let (name, cert, key, fp) = gdx_exchange::certs::issue_client(
                &dir,
                &name,
                now - chrono::Duration::days(1)..now + chrono::Duration::days(i64::from(days)),
            )?;
            if json {
                print_object(&json!({"name": name, "cert": cert, "key": key, "fingerprint": fp}), true);
            } else {
                gdx_exchange::out!("client {name}: {} and {} (sha256 {fp})", cert.display(), key.display());
                gdx_exchange::out!("bind it to a principal: gdx token cert PRINCIPAL --cert {}", cert.display());
            }
        }
        Command::Token(TokenCmd::Revoke { id }) => {
            client()?.call(reqwest::Method::DELETE, &format!("/api/v1/tokens/{}", enc(&id)), &[], None).await?;
            if !json {
                gdx_exchange::out!("token {id} revoked");
            }
        }
        Command::Dataset(DatasetCmd::Register { file }) => {
            let body = cli::read_definition(&file)?;
            let v = client()?.post("/api/v1/datasets", &body).await?;
            if json {
                print_object(&v, true);
            } else {
                gdx_exchange::out!("dataset {} registered", v["id"].as_str().unwrap_or("?"));
            }
        }
        Command::Dataset(DatasetCmd::List { filters }) => {
            let v = client()?.get("/api/v1/datasets", &filters.query()).await?;
            print_list(&v, DATASET_COLUMNS, json);
        }
        Command::Dataset(DatasetCmd::Show { id }) => {
            print_object(&client()?.get(&format!("/api/v1/datasets/{}", enc(&id)), &[]).await?, json);
        }
        Command::Dataset(DatasetCmd::Search { query, filters }) => {
            let mut q = filters.query();
            q.push(("q", query));
            let v = client()?.get("/api/v1/datasets", &q).await?;
            print_list(&v, DATASET_COLUMNS, json);
        }
        Command::Sql { query, purpose, limit, format } => {
            let body = json!({"sql": query, "purpose": purpose, "limit": limit});
            let accept = match (format, json) {
                (SqlFormat::Csv, _) => Some("text/csv"),
                (SqlFormat::Arrow, _) => Some("application/vnd.apache.arrow.stream"),
                _ => None,
            };
            if let Some(accept) = accept {
                client()?.post_streamed("/api/v1/query", &body, accept, &mut std::io::stdout()).await?;
            } else {
                let v = client()?.post("/api/v1/query", &body).await?;
                if json || format == SqlFormat::Json {
                    print_object(&v, true);
                } else {
                    cli::print_rows(&v);
                }
            }
        }
        Command::Policy(cmd) => {
            let (id, v) = match cmd {
                PolicyCmd::Show { id } => {
                    let v = client()?.get(&format!("/api/v1/datasets/{}/policy", enc(&id)), &[]).await?;
                    (id, v)
                }
                PolicyCmd::Set { id, file } => {
                    let body = cli::read_definition(&file)?;
                    let v = client()?
                        .call(reqwest::Method::PUT, &format!("/api/v1/datasets/{}/policy", enc(&id)), &[], Some(&body))
                        .await?;
                    (id, v)
                }
            };
            if json {
                print_object(&v, true);
            } else {
                print_policy(&id, &v);
            }
        }
        Command::Dataset(DatasetCmd::Maintain { id, no_optimize, no_vacuum, retention_hours }) => {
            let body = json!({"optimize": !no_optimize, "vacuum": !no_vacuum, "retention_hours": retention_hours});
            let v = client()?.post(&format!("/api/v1/datasets/{}/maintenance", enc(&id)), &body).await?;
            if json {
                print_object(&v, true);
            } else {
                gdx_exchange::out!(
                    "{id}: {} files compacted into {}, {} files deleted",
                    v["files_compacted"],
                    v["files_written"],
                    v["files_deleted"]
                );
            }
        }
        Command::Dataset(DatasetCmd::Versions { id }) => {
            let v = client()?.get(&format!("/api/v1/datasets/{}/versions", enc(&id)), &[]).await?;
            print_list(
                &v,
                &[
                    ("version", "version"),
                    ("mode", "mode"),
                    ("rows_written", "rows written"),
                    ("row_count", "rows"),
                    ("rejected", "rejected"),
                    ("bytes", "bytes"),
                    ("committed_at", "committed at"),
                    ("committed_by", "by"),
                ],
                json,
            );
        }
        Command::Push { dataset, file, mode, format, on_error, idempotency_key } => {
            let name = match format {
                Some(f) => f,
                None => file.extension().and_then(|e| e.to_str()).unwrap_or("").to_string(),
            };
            let format = gdx_connectors::Format::from_name(&name).with_context(|| {
                format!(
                    "cannot tell the format of {}; pass --format csv|csv-gbk|csv-gb18030|ndjson|parquet|arrow",
                    file.display()
                )
            })?;
            let query = [("mode", mode), ("on_error", on_error)];
            let v = cli::push(&client()?, &dataset, &file, format.content_type(), &query, idempotency_key.as_deref())
                .await?;
            if json {
                print_object(&v, true);
            } else {
                gdx_exchange::out!(
                    "{dataset} version {} committed: {} rows written ({}), {} rows in all{}",
                    v["version"],
                    v["rows_written"],
                    v["mode"].as_str().unwrap_or(""),
                    v["row_count"],
                    match v["rejected"].as_i64() {
                        Some(n) if n > 0 => format!(", {n} rows set aside (see the version's rejects)"),
                        _ => String::new(),
                    }
                );
            }
        }
        Command::Datagen { kind, definition: Some(department), .. } => {
            gdx_exchange::out!("{}", serde_json::to_string_pretty(&kind.definition(&department))?);
        }
        Command::Datagen { kind, rows, seed, people, enterprises, format, out, definition: None } => {
            use gdx_exchange::datagen;
            let out = out.context("--out is required")?;
            let params = datagen::Params { seed, people, enterprises, today: gdx_catalog::catalog::today_shanghai() };
            let started = std::time::Instant::now();
            let mut last = std::time::Instant::now();
            let n = datagen::generate(kind, rows, &params, format, &out, &mut |done| {
                if last.elapsed().as_secs() >= 2 {
                    last = std::time::Instant::now();
                    let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
                    let eta = (rows.saturating_sub(done)) as f64 / rate.max(1.0);
                    eprintln!("gdx datagen: {done}/{rows} rows ({rate:.0} rows/s, ETA {eta:.0}s)");
                }
            })?;
            eprintln!(
                "gdx datagen: wrote {n} {} rows to {} in {:.1}s",
                kind.dataset_name(),
                out.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Backup { data_dir, out } => {
            let manifest = gdx_exchange::backup::backup(&data_dir, &out, &mut |m| eprintln!("gdx backup: {m}"))
                .with_context(|| format!("backing up {}", data_dir.display()))?;
            if json {
                gdx_exchange::out!("{}", serde_json::to_string_pretty(&manifest)?);
            }
        }
        Command::Restore { data_dir, from, force } => {
            gdx_exchange::backup::restore(&data_dir, &from, force, &mut |m| eprintln!("gdx restore: {m}"))
                .with_context(|| format!("restoring into {}", data_dir.display()))?;
        }
    }
    Ok(())
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A policy as two short tables.
fn print_policy(id: &str, v: &serde_json::Value) {
    let empty = Vec::new();
    let masks = v["masks"].as_array().unwrap_or(&empty);
    let filters = v["row_filters"].as_array().unwrap_or(&empty);
    gdx_exchange::out!("{id}");
    if masks.is_empty() {
        gdx_exchange::out!("masks: the defaults (personal columns by semantic type)");
    }
    for m in masks {
        gdx_exchange::out!("mask   {:<20} {:<14} for {}", cell(&m["column"]), cell(&m["mask"]), cell(&m["for"]));
    }
    if filters.is_empty() {
        gdx_exchange::out!("row filters: none");
    }
    for f in filters {
        gdx_exchange::out!("filter for {:<18} {}", cell(&f["for"]), cell(&f["filter"]));
    }
    if let Some(by) = v["updated_by"].as_str() {
        gdx_exchange::out!("set by {by} at {}", cell(&v["updated_at"]));
    }
}

fn cell(v: &serde_json::Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
}
