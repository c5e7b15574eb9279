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
    /// The metadata store could not be read.
    #[error("metadata store: {source}")]
    Store {
        /// The store's error.
        #[from]
        source: gdx_catalog::Error,
    },
    /// A stored policy is not what this version understands.
    #[error("{0}")]
    Policy(String),
}

/// Result with the policies' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads a policy file.
pub(crate) fn read_file(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}
