//! gdx-exchange: the running GDX service and the `gdx` command-line tool.
//!
//! The HTTP API ([`api`]) over the catalogue and the policies, the server
//! ([`App`]), its configuration ([`config`]), operations ([`backup`]) and the
//! client commands of the CLI ([`cli`]).

pub mod api;
pub mod audit;
pub mod backup;
pub mod certs;
pub mod cli;
pub mod config;
pub mod datagen;
pub mod demo;
pub mod error;
pub mod ingest;
pub mod limits;
pub mod push;
pub mod query;
pub mod secret;
pub mod server;
pub mod state;
pub mod tls;
pub mod webhook;

pub use config::Config;
pub use error::{Error, Result};
pub use server::App;

/// Installs the process's rustls crypto provider (aws-lc-rs, which the lake's
/// object store uses too). Both ring and aws-lc-rs are linked, so rustls cannot
/// pick one by itself; call this before any TLS is used. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
