//! The error type of the catalogue and the metadata store.

use serde::Serialize;

/// One problem with one field of an input document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field in the input, e.g. `columns[2].type`.
    pub field: String,
    /// What is wrong with it, for a person.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Errors of the catalogue and the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is invalid; nothing was stored.
    #[error("invalid input: {}", summary(.errors))]
    Validation {
        /// Every problem found, field by field.
        errors: Vec<FieldError>,
    },
    /// The object does not exist.
    #[error("{kind} '{id}' not found")]
    NotFound {
        /// What kind of object: `department`, `principal`, `dataset`, `token`.
        kind: &'static str,
        /// The identifier that was looked up.
        id: String,
    },
    /// The object already exists, or a unique attribute is taken.
    #[error("{kind} {field} '{value}' already exists")]
    Conflict {
        /// What kind of object.
        kind: &'static str,
        /// Which attribute collided (`id`, `resource_code`, ...).
        field: &'static str,
        /// The colliding value.
        value: String,
    },
    /// The object was answered (approved, rejected, resolved) already.
    #[error("{kind} '{id}' was answered already")]
    Answered {
        /// What kind of object.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The metadata database failed.
    #[error("metadata store: {source}")]
    Store {
        /// The underlying SQLite error.
        #[from]
        source: rusqlite::Error,
    },
    /// A file of the metadata store could not be read or written.
    #[error("metadata store I/O at {path}: {source}")]
    Io {
        /// The file concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Stored data could not be decoded (a corrupt or foreign database).
    #[error("metadata store holds undecodable data in {what}: {message}")]
    Corrupt {
        /// Which record or column.
        what: &'static str,
        /// Decoder message.
        message: String,
    },
    /// A blocking store task was cancelled or panicked.
    #[error("metadata store task failed: {message}")]
    Task {
        /// Why the task ended.
        message: String,
    },
}

fn summary(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// A validation error about one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation { errors: vec![FieldError::new(field, message)] }
    }
}

/// Result with the catalogue's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
