//! The platform secret: the key of keyed-hash masks and of audit checkpoints.
//!
//! It lives outside the data directory (a backup or a copied data directory
//! must not carry it), in a file of mode 0600 created on first start: by
//! default `gdx-secret.key` beside the configuration file, or beside the data
//! directory when there is none.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File name of the secret when no path is configured.
pub const DEFAULT_FILE: &str = "gdx-secret.key";

/// 32 random bytes. Never printed: `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct PlatformSecret([u8; 32]);

impl std::fmt::Debug for PlatformSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlatformSecret(..)")
    }
}

impl PlatformSecret {
    /// The key bytes, for HMAC.
    pub fn key(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Where the secret is kept when `secret_key_file` is not set.
pub fn default_path(config_file: Option<&Path>, data_dir: &Path) -> PathBuf {
    let beside = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match config_file {
        Some(c) => beside(c).join(DEFAULT_FILE),
        None => beside(data_dir).join(DEFAULT_FILE),
    }
}

/// Reads the secret at `path`, creating it (mode 0600) if absent.
///
/// Refuses a file inside `data_dir`, a file other users may read, and a file
/// that does not hold 32 hex-encoded bytes.
pub fn load_or_create(path: &Path, data_dir: &Path) -> Result<PlatformSecret> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    outside(path, data_dir)?;
    if !path.exists() {
        let key: [u8; 32] = rand::random();
        crate::server::write_private_file(path, &format!("{}\n", hex::encode(key)), false)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        tracing::info!(file = %path.display(), "created the platform secret");
        return Ok(PlatformSecret(key));
    }
    read(path)
}

/// Reads an existing secret (offline tools: they never create one), with the
/// checks of [`load_or_create`].
pub fn load(path: &Path, data_dir: &Path) -> Result<PlatformSecret> {
    if !path.exists() {
        return Err(Error::Config {
            message: format!("no platform secret at {} (set secret_key_file or GDX_SECRET_KEY_FILE)", path.display()),
        });
    }
    outside(path, data_dir)?;
    read(path)
}

/// Refuses a secret whose folder (which must exist) lies inside `data_dir`.
fn outside(path: &Path, data_dir: &Path) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let canon = |p: &Path| p.canonicalize().map_err(|source| Error::Io { path: p.to_path_buf(), source });
    if canon(dir)?.starts_with(canon(data_dir)?) {
        return Err(Error::Config {
            message: format!(
                "the platform secret {} must be kept outside the data directory {}",
                path.display(),
                data_dir.display()
            ),
        });
    }
    Ok(())
}

fn read(path: &Path) -> Result<PlatformSecret> {
    let config = |message: String| Error::Config { message };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(config(format!(
                "the platform secret {} is readable by other users (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
    let Some(bytes) = bytes else {
        return Err(config(format!("the platform secret {} must hold 64 hexadecimal digits", path.display())));
    };
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes);
    Ok(PlatformSecret(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_outside_the_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let path = default_path(None, &data);
        assert_eq!(path, dir.path().join(DEFAULT_FILE));
        let a = load_or_create(&path, &data).expect("created");
        let b = load_or_create(&path, &data).expect("read back");
        assert_eq!(a.key(), b.key());
        assert_eq!(format!("{a:?}"), "PlatformSecret(..)");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(load_or_create(&path, &data).is_err());
        }
        assert!(load_or_create(&data.join("secret.key"), &data).is_err());
        std::fs::write(dir.path().join("bad.key"), "xyz").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path().join("bad.key"), std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        assert!(load_or_create(&dir.path().join("bad.key"), &data).is_err());
    }
}
