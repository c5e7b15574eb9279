//! The error type of the connectors.

use std::path::PathBuf;

/// Errors that stop decoding an upload as a whole (row-level problems are
/// [`crate::RowError`]s, collected instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upload's structure is broken (not CSV, not Parquet, a ragged row, ...).
    #[error("malformed {format} input{}: {message}", row.map(|r| format!(" at row {r}")).unwrap_or_default())]
    Malformed {
        /// The format being decoded.
        format: &'static str,
        /// The data row (from 1), when known.
        row: Option<u64>,
        /// What is wrong.
        message: String,
    },
    /// The upload's columns do not fit the dataset's schema.
    #[error("the upload's columns do not match the dataset: {message}")]
    Columns {
        /// Which columns are unknown or missing.
        message: String,
    },
    /// The content type or charset is not one GDX reads.
    #[error("unsupported format: {message}")]
    Unsupported {
        /// What was asked for.
        message: String,
    },
    /// A temporary or staged file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The receiver of the checked rows failed (see [`crate::stage_to`]).
    #[error("writing the checked rows: {source}")]
    Sink {
        /// The receiver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Arrow failed on data it produced itself (not the upload's fault).
    #[error("arrow: {source}")]
    Arrow {
        /// The underlying error.
        #[from]
        source: arrow::error::ArrowError,
    },
}

/// Result with the connectors' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
