//! The error type of gdx-policies.

/// Errors of policy loading and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The casbin model or policy could not be loaded or evaluated.
    #[error("policy engine: {source}")]
    Casbin {
        /// The casbin error.
        #[from]
        source: casbin::Error,
    },
    /// A policy file could not be read.
    #[error("policy file {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result with the policies' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
