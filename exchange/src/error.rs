//! The error type of the exchange outside request handling (start-up, CLI, backup).

use std::path::PathBuf;

/// Errors of start-up, operations and the CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another process uses the data directory.
    #[error("the data directory {} is in use by another gdx process", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The catalogue failed.
    #[error(transparent)]
    Catalog(#[from] gdx_catalog::Error),
    /// The policies failed to load.
    #[error(transparent)]
    Policy(#[from] gdx_policies::Error),
    /// The audit log failed.
    #[error("audit log {}: {source} ({source:?})", source.path().display())]
    Audit {
        /// The underlying error.
        #[from]
        source: crate::audit::AuditError,
    },
    /// A backup file is not usable.
    #[error("backup {}: {message}", path.display())]
    Backup {
        /// The backup file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Result with the exchange's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
