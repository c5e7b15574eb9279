//! `gdx certs init`: a local certificate authority, a server certificate and
//! client certificates, for HTTPS and mutual TLS without an outside CA.
//!
//! Keys are ECDSA P-256. The CA is valid for ten years, the certificates it
//! issues for one. `gdx certs client` issues more client certificates from
//! the same CA; `gdx certs init --force` writes a whole new set, CA included
//! (clients then need the new `ca.pem`). A running server picks up a new
//! certificate without a restart. Private keys are written with mode 0600.

use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Datelike, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// What `gdx certs init` writes.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The CA certificate clients trust (`ca.pem`); its key is `ca.key`.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub server: (PathBuf, PathBuf),
    /// Per client: its name, certificate, key and SHA-256 fingerprint.
    pub clients: Vec<(String, PathBuf, PathBuf, String)>,
}

/// The names `gdx certs init` puts in the server certificate by default.
pub const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Valid from a day before now (for clocks a little behind) for `days`.
fn days_from_now(days: i64) -> Range<DateTime<Utc>> {
    Utc::now() - Duration::days(1)..Utc::now() + Duration::days(days)
}

fn set_validity(params: &mut CertificateParams, valid: &Range<DateTime<Utc>>) {
    let day = |t: &DateTime<Utc>| rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8);
    params.not_before = day(&valid.start);
    params.not_after = day(&valid.end);
}

/// The CA's parameters: what `init` signs it with and what an issuer of
/// more certificates from its key must say.
fn ca_params() -> CertificateParams {
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "GDX local CA");
    dn.push(DnType::OrganizationName, "GDX");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca
}

fn client_cert(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    valid: &Range<DateTime<Utc>>,
) -> anyhow::Result<(String, PathBuf, PathBuf, String)> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    set_validity(&mut params, valid);
    let key = KeyPair::generate().context("generating a client key")?;
    let cert = params.signed_by(&key, issuer).with_context(|| format!("signing the certificate of {name}"))?;
    write(dir, &format!("{name}.pem"), &cert.pem(), false)?;
    write(dir, &format!("{name}.key"), &key.serialize_pem(), true)?;
    Ok((
        name.to_string(),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
        crate::tls::fingerprint(cert.der()),
    ))
}

/// Issues one more client certificate from the CA `init` made in `dir`
/// (its `ca.key`), valid over `valid`; an existing one of that name is
/// replaced. Answers its name, certificate, key and fingerprint.
pub fn issue_client(
    dir: &Path,
    name: &str,
    valid: Range<DateTime<Utc>>,
) -> anyhow::Result<(String, PathBuf, PathBuf, String)> {
    check_client_name(name)?;
    let key_path = dir.join("ca.key");
    let pem =
        std::fs::read_to_string(&key_path).with_context(|| format!("reading the CA key {}", key_path.display()))?;
    let key = KeyPair::from_pem(&pem).with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
    let issuer = Issuer::new(ca_params(), key);
    client_cert(dir, &issuer, name, &valid)
}

/// `issue_client` for a year from now.
pub fn issue_client_for_a_year(dir: &Path, name: &str) -> anyhow::Result<(String, PathBuf, PathBuf, String)> {
    issue_client(dir, name, days_from_now(365))
}

fn check_client_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        || name.starts_with('.')
        || ["ca", "server"].contains(&name)
    {
        bail!("client name '{name}': use 1 to 64 letters, digits, '_', '-' or '.' (not 'ca' or 'server')");
    }
    Ok(())
}

/// Creates the CA, a server certificate for `names` (DNS names or IP
/// addresses) and a certificate per client in `dir`. Existing files are
/// refused unless `force`.
pub fn init(dir: &Path, names: &[String], clients: &[String], force: bool) -> anyhow::Result<Issued> {
    if names.is_empty() {
        bail!("give the server at least one name (--names localhost,127.0.0.1)");
    }
    for c in clients {
        check_client_name(c)?;
    }
    let mut files =
        vec!["ca.pem", "ca.key", "server.pem", "server.key"].into_iter().map(String::from).collect::<Vec<_>>();
    for c in clients {
        files.push(format!("{c}.pem"));
        files.push(format!("{c}.key"));
    }
    if !force {
        let existing: Vec<_> = files.iter().filter(|f| dir.join(f).exists()).cloned().collect();
        if !existing.is_empty() {
            bail!("{} already holds {}; --force replaces them", dir.display(), existing.join(", "));
        }
    }
    create_private_dir(dir)?;

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = ca_params();
    set_validity(&mut ca, &days_from_now(3650));
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA certificate")?;
    write(dir, "ca.pem", &ca_cert.pem(), false)?;
    write(dir, "ca.key", &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[0].as_str());
    server.distinguished_name = dn;
    for n in names {
        let n = n.trim();
        server.subject_alt_names.push(match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.try_into().with_context(|| format!("'{n}' is not a DNS name or IP address"))?),
        });
    }
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut server, &days_from_now(365));
    let server_key = KeyPair::generate().context("generating the server key")?;
    let server_cert = server.signed_by(&server_key, &issuer).context("signing the server certificate")?;
    write(dir, "server.pem", &server_cert.pem(), false)?;
    write(dir, "server.key", &server_key.serialize_pem(), true)?;

    let mut issued_clients = Vec::new();
    for name in clients {
        issued_clients.push(client_cert(dir, &issuer, name, &days_from_now(365))?);
    }
    Ok(Issued {
        ca: dir.join("ca.pem"),
        server: (dir.join("server.pem"), dir.join("server.key")),
        clients: issued_clients,
    })
}

/// The SHA-256 fingerprint of the first certificate of a PEM file, as
/// `POST /api/v1/principals/{id}/certificates` takes it.
pub fn fingerprint_of(path: &Path) -> anyhow::Result<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .next()
        .with_context(|| format!("{} holds no certificate", path.display()))?
        .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
    Ok(crate::tls::fingerprint(cert.as_ref()))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// Writes a file whole: to a temporary file beside it, then renamed into
/// place, so that a server reloading it never reads half a file. Keys get
/// mode 0600, certificates 0644.
fn write(dir: &Path, name: &str, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dir.join(name);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    tmp.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(&path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn init_writes_a_ca_a_server_and_clients_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let issued = init(&out, &names, &["renshe_service".into()], false).unwrap();
        for f in ["ca.pem", "ca.key", "server.pem", "server.key", "renshe_service.pem", "renshe_service.key"] {
            assert!(out.join(f).is_file(), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("server.key"), 0o600);
            assert_eq!(mode("ca.key"), 0o600);
            assert_eq!(mode("renshe_service.key"), 0o600);
            assert_eq!(mode("ca.pem"), 0o644);
        }
        let (name, pem, _, fp) = &issued.clients[0];
        assert_eq!(name, "renshe_service");
        assert_eq!(&fingerprint_of(pem).unwrap(), fp);
        // The client certificate's subject is its name.
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_file(pem).unwrap();
        assert_eq!(crate::tls::subject_common_name(der.as_ref()).as_deref(), Some("renshe_service"));
        // The server configuration loads from what was written.
        crate::install_crypto_provider();
        crate::tls::server_config(&crate::tls::TlsFiles {
            cert: issued.server.0.clone(),
            key: issued.server.1.clone(),
            client_ca: Some(issued.ca.clone()),
        })
        .unwrap();

        let again = init(&out, &names, &[], false).unwrap_err().to_string();
        assert!(again.contains("--force"), "{again}");
        init(&out, &names, &[], true).unwrap();
        assert!(init(&out, &names, &["../x".into()], true).is_err());
        assert!(init(&out, &[], &[], true).is_err());
    }
}
