//! `gdx backup` and `gdx restore`: one archive with the metadata store, the
//! audit log and the lake, taken consistently while the server runs.
//!
//! The SQLite databases are copied with SQLite's online backup (a consistent
//! snapshot even while the server writes). The lake is copied after the
//! metadata store, Delta logs before data files: the Delta log is the source
//! of truth and the catalogue catches up from it at start, so a lake a little
//! ahead of the metadata snapshot is consistent, and every data file a copied
//! log version names is still there when the data files are copied (files
//! are only ever added, and vacuum keeps those within its retention period).
//! Rows that pushes set aside (`rejects/`) are copied the same way.
//! The archive is a tar file with a `MANIFEST.json` of SHA-256 sums, written
//! beside its destination and renamed into place when complete. The
//! administrator token file is not included: a restored server creates a new
//! one.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::versions::REJECTS_DIR;
use crate::error::{Error, Result};
use crate::server::{LOCK_FILE, META_DB};

/// The audit log's database file in the data directory.
pub const AUDIT_DB: &str = "audit.db";
/// The lake's folder in the data directory.
pub const LAKE_DIR: &str = "lake";
const MANIFEST: &str = "MANIFEST.json";
const FORMAT: &str = "gdx-backup";

/// The archive's table of contents.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `gdx-backup`.
    pub format: String,
    /// Layout version of the archive.
    pub format_version: u32,
    /// The gdx version that wrote it.
    pub gdx_version: String,
    /// When it was taken (RFC 3339).
    pub created_at: String,
    /// Every file with its size and SHA-256.
    pub files: Vec<ManifestFile>,
}

/// One file of a backup.
#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the data directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = BufReader::new(File::open(path).map_err(io(path))?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

/// Files under `dir`, relative paths, Delta logs first.
fn lake_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io(&path))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                out.push(path.strip_prefix(dir).unwrap_or(&path).to_path_buf());
            }
        }
    }
    out.sort_by_key(|p| (!p.components().any(|c| c.as_os_str() == "_delta_log"), p.clone()));
    Ok(out)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn sqlite_snapshot(src: &Path, dest: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(gdx_catalog::Error::from)?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(gdx_catalog::Error::from)?;
    gdx_catalog::sqlite::backup_connection(&conn, dest)?;
    Ok(())
}

/// Writes a backup of `data_dir` to `out`, reporting progress through `progress`.
pub fn backup(data_dir: &Path, out: &Path, progress: &mut dyn FnMut(&str)) -> Result<Manifest> {
    let meta = data_dir.join(META_DB);
    if !meta.is_file() {
        return Err(Error::Config {
            message: format!("{} is not a GDX data directory (no {META_DB})", data_dir.display()),
        });
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new().prefix(".gdx-backup-").tempdir_in(&parent).map_err(io(&parent))?;
    let mut files: Vec<(String, PathBuf)> = Vec::new();

    progress(&format!("snapshot {META_DB}"));
    sqlite_snapshot(&meta, &staging.path().join(META_DB))?;
    files.push((META_DB.into(), staging.path().join(META_DB)));
    for name in [AUDIT_DB, crate::push::PUSH_DB] {
        let db = data_dir.join(name);
        if db.is_file() {
            progress(&format!("snapshot {name}"));
            sqlite_snapshot(&db, &staging.path().join(name))?;
            files.push((name.into(), staging.path().join(name)));
        }
    }
    for folder in [LAKE_DIR, REJECTS_DIR] {
        let lake = data_dir.join(folder);
        if !lake.is_dir() {
            continue;
        }
        let list = lake_files(&lake)?;
        progress(&format!("copy {folder}/: {} files", list.len()));
        for rel in list {
            let src = lake.join(&rel);
            let dest = staging.path().join(folder).join(&rel);
            if let Some(d) = dest.parent() {
                std::fs::create_dir_all(d).map_err(io(d))?;
            }
            match std::fs::copy(&src, &dest) {
                Ok(_) => {}
                // A file removed by vacuum after listing is one no retained version needs.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(Error::Io { path: src, source }),
            }
            let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            files.push((format!("{folder}/{rel}"), dest));
        }
    }

    let mut manifest = Manifest {
        format: FORMAT.into(),
        format_version: 1,
        gdx_version: env!("CARGO_PKG_VERSION").into(),
        created_at: chrono::Utc::now().to_rfc3339(),
        files: Vec::new(),
    };
    for (name, path) in &files {
        let (bytes, sha256) = sha256_file(path)?;
        manifest.files.push(ManifestFile { path: name.clone(), bytes, sha256 });
    }
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    progress(&format!("write archive: {} files, {}", manifest.files.len(), human(total)));

    let tmp = tempfile::Builder::new()
        .prefix(".gdx-backup-")
        .suffix(".tar.part")
        .tempfile_in(&parent)
        .map_err(io(&parent))?;
    {
        let mut builder = tar::Builder::new(BufWriter::new(tmp.as_file()));
        let manifest_json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Config { message: e.to_string() })?;
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest_json.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        builder.append_data(&mut header, MANIFEST, manifest_json.as_slice()).map_err(io(out))?;
        for (name, path) in &files {
            let mut f = File::open(path).map_err(io(path))?;
            builder.append_file(name, &mut f).map_err(io(path))?;
        }
        let mut w = builder.into_inner().map_err(io(out))?;
        w.flush().map_err(io(out))?;
    }
    tmp.as_file().sync_all().map_err(io(out))?;
    tmp.persist(out).map_err(|e| Error::Io { path: out.to_path_buf(), source: e.error })?;
    progress(&format!("backup written to {}", out.display()));
    Ok(manifest)
}

/// Restores the backup `from` into `data_dir`.
///
/// The archive is unpacked and verified beside the data directory first; only
/// a complete, verified copy replaces it. An existing data directory is
/// refused unless `force`, and then kept as `<data_dir>.before-restore-<time>`.
/// A running server (holding the data directory's lock) is always refused.
pub fn restore(data_dir: &Path, from: &Path, force: bool, progress: &mut dyn FnMut(&str)) -> Result<Manifest> {
    let bad = |message: String| Error::Backup { path: from.to_path_buf(), message };
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let occupied = data_dir.join(META_DB).exists();
    if data_dir.is_dir() && !occupied {
        let foreign = std::fs::read_dir(data_dir)
            .map_err(io(data_dir))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name() != LOCK_FILE && e.file_name() != crate::server::ADMIN_TOKEN_FILE);
        if foreign {
            return Err(Error::Config {
                message: format!(
                    "{} is not empty and is not a GDX data directory; choose another --data-dir",
                    data_dir.display()
                ),
            });
        }
    }
    let _lock = if data_dir.is_dir() { Some(crate::server::lock_data_dir(data_dir)?) } else { None };
    if occupied && !force {
        return Err(Error::Config {
            message: format!("{} already holds a GDX data directory; pass --force to replace it", data_dir.display()),
        });
    }

    let staging = tempfile::Builder::new().prefix(".gdx-restore-").tempdir_in(&parent).map_err(io(&parent))?;
    progress(&format!("unpack {}", from.display()));
    let file = File::open(from).map_err(io(from))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    archive.set_preserve_permissions(false);
    archive.unpack(staging.path()).map_err(|e| bad(format!("cannot unpack: {e}")))?;

    let manifest_path = staging.path().join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(|_| bad("no MANIFEST.json: not a GDX backup".into()))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(format!("unreadable MANIFEST.json: {e}")))?;
    if manifest.format != FORMAT || manifest.format_version != 1 {
        return Err(bad(format!("unsupported backup format {} v{}", manifest.format, manifest.format_version)));
    }
    progress(&format!("verify {} files", manifest.files.len()));
    for f in &manifest.files {
        if f.path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(bad(format!("unsafe path {}", f.path)));
        }
        let (bytes, sha) =
            sha256_file(&staging.path().join(&f.path)).map_err(|_| bad(format!("{} is missing", f.path)))?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(bad(format!("{} does not match its checksum: the archive is damaged", f.path)));
        }
    }
    if !manifest.files.iter().any(|f| f.path == META_DB) {
        return Err(bad(format!("the archive holds no {META_DB}")));
    }
    std::fs::remove_file(&manifest_path).map_err(io(&manifest_path))?;

    let restored = staging.keep();
    if data_dir.exists() {
        if occupied {
            let aside = PathBuf::from(format!(
                "{}.before-restore-{}",
                data_dir.display(),
                chrono::Utc::now().format("%Y%m%dT%H%M%S")
            ));
            progress(&format!("keep the previous data directory as {}", aside.display()));
            std::fs::rename(data_dir, &aside).map_err(io(data_dir))?;
        } else {
            // An empty directory, or one holding only a lock file or an administrator token: replaced.
            let keep_token = data_dir.join(crate::server::ADMIN_TOKEN_FILE);
            if keep_token.is_file() {
                let _ = std::fs::copy(&keep_token, restored.join(crate::server::ADMIN_TOKEN_FILE));
            }
            let _ = std::fs::remove_file(data_dir.join(LOCK_FILE));
            std::fs::remove_dir_all(data_dir).map_err(io(data_dir))?;
        }
    }
    std::fs::rename(&restored, data_dir).map_err(io(data_dir))?;
    progress(&format!("restored into {}", data_dir.display()));
    Ok(manifest)
}
