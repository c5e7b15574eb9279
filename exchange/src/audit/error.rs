//! The errors of the audit log.
//!
//! Messages name no file: they may reach HTTP clients. The file and the
//! underlying cause travel in fields, for the server's log.

use std::path::PathBuf;

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit log cannot be written: the record is not durable, and the
    /// action it records must not proceed (HTTP 503).
    #[error("the audit log cannot be written")]
    Unavailable {
        /// The audit database.
        path: PathBuf,
        /// The underlying cause, for the server's log.
        reason: String,
    },
    /// The audit log cannot be read.
    #[error("the audit log cannot be read")]
    Read {
        /// The audit database.
        path: PathBuf,
        /// The underlying cause, for the server's log.
        reason: String,
    },
    /// The audit log cannot be opened or created.
    #[error("the audit log cannot be opened: {reason}")]
    Open {
        /// The audit database.
        path: PathBuf,
        /// The underlying cause (an SQLite or operating-system message).
        reason: String,
    },
    /// There is no audit log at the path given (offline verification never creates one).
    #[error("there is no audit log at the path given")]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The file is an audit log of a newer schema than this build knows.
    #[error("the audit log has schema version {found}; this build knows up to {known}")]
    Schema {
        /// The audit database.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A stored record is not a valid record (the verifier says more).
    #[error("audit record {seq} cannot be decoded")]
    Corrupt {
        /// The audit database.
        path: PathBuf,
        /// Its seq.
        seq: u64,
        /// The decoding error.
        reason: String,
    },
}

impl AuditError {
    /// The audit database concerned, for the server's log.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::Unavailable { path, .. }
            | Self::Read { path, .. }
            | Self::Open { path, .. }
            | Self::NotFound { path }
            | Self::Schema { path, .. }
            | Self::Corrupt { path, .. } => path,
        }
    }

    /// Whether the log cannot take new records (the HTTP layer answers 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
