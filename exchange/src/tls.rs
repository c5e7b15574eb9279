//! HTTPS for `gdx serve`: the rustls configuration, read from PEM files and
//! read again when they change; the listener, which does TLS handshakes
//! beside its accept loop; and what a client certificate says of its holder.
//!
//! The server speaks TLS 1.3 and 1.2 only, with the AEAD cipher suites and
//! ECDHE key exchanges of the aws-lc-rs provider. With a client CA, clients
//! may present a certificate issued by it (mutual TLS); a certificate from
//! another CA, or an expired one, fails the handshake. Clients without a
//! certificate still connect and authenticate with a bearer token.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(10);
/// Connections accepted but not yet taken by the server.
const BACKLOG: usize = 256;

/// The PEM files HTTPS is served with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA whose client certificates are accepted (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.client_ca.as_deref()].into_iter().flatten()
    }
}

fn config_error(message: String) -> Error {
    Error::Config { message }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| config_error(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(format!("{what} {}: no certificate in it", path.display())));
    }
    Ok(certs)
}

/// Builds the server configuration from the files as they are now.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = read_certs(&files.cert, "TLS certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| config_error(format!("TLS key {}: {e}", files.key.display())))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| config_error(format!("TLS: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in read_certs(path, "client CA")? {
                roots.add(ca).map_err(|e| config_error(format!("client CA {}: {e}", path.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| config_error(format!("client CA {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        config_error(format!("TLS certificate {} and key {}: {e}", files.cert.display(), files.key.display()))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server configuration in force, replaced when its files change.
#[derive(Debug)]
pub struct Reloader {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, Vec<Stamp>)>,
}

/// What tells a file changed: its modification time, length and (on Unix)
/// inode, which a file renamed into place changes.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamps(files: &TlsFiles) -> Vec<Stamp> {
    files
        .paths()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                #[cfg(unix)]
                let ino = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let ino = 0;
                (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), ino)
            })
        })
        .collect()
}

impl Reloader {
    /// Reads the files; an error says which one is wrong.
    pub fn new(files: TlsFiles) -> Result<Self> {
        let stamp = stamps(&files);
        let config = server_config(&files)?;
        Ok(Self { files, current: RwLock::new((config, stamp)) })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Reads the files again if they changed since they were last read (or
    /// always, with `force`). A file that does not load leaves the
    /// configuration in force as it was; the error says why.
    pub fn reload(&self, force: bool) -> Result<bool> {
        let stamp = stamps(&self.files);
        if !force && self.current.read().unwrap_or_else(|e| e.into_inner()).1 == stamp {
            return Ok(false);
        }
        let config = server_config(&self.files);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // A broken file is reported once, not at every poll.
        current.1 = stamp;
        current.0 = config?;
        Ok(true)
    }

    /// Checks the files every `poll`, and at once on SIGHUP.
    pub async fn watch(self: Arc<Self>, poll: Duration) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let force = tokio::select! {
                _ = tokio::time::sleep(poll) => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            #[cfg(not(unix))]
            let force = {
                tokio::time::sleep(poll).await;
                false
            };
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload(force)).await {
                Ok(Ok(true)) => tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "TLS files not reloaded; the previous certificate stays in use")
                }
                Err(e) => tracing::warn!(error = %e, "TLS reload failed"),
            }
        }
    }
}

/// A client certificate that passed verification against the client CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// SHA-256 of its DER encoding, lowercase hex.
    pub fingerprint: String,
    /// The common name (CN) of its subject, if it has one.
    pub subject_cn: Option<String>,
}

impl ClientCert {
    /// What a verified end-entity certificate says.
    pub fn of(der: &[u8]) -> Self {
        Self { fingerprint: fingerprint(der), subject_cn: subject_common_name(der) }
    }
}

/// SHA-256 of a certificate's DER encoding, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The peer of a connection, as requests see it
/// (`axum::extract::ConnectInfo<Peer>`).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its verified client certificate, if it presented one.
    pub cert: Option<Arc<ClientCert>>,
}

/// A connection: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Conn {
    /// HTTP.
    Plain(TcpStream),
    /// HTTPS.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The server's listener. Connections are accepted by a task of their own;
/// TLS handshakes run each in a task, with a time limit, so that a slow or
/// silent client never holds up the others.
#[derive(Debug)]
pub struct Listener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(Conn, Peer)>,
}

impl Listener {
    /// Listens on `tcp`; with `tls`, every connection is HTTPS.
    pub fn new(tcp: TcpListener, tls: Option<Arc<Reloader>>) -> io::Result<Self> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        tokio::spawn(accept_loop(tcp, tls, tx));
        Ok(Self { addr, ready })
    }
}

async fn accept_loop(tcp: TcpListener, tls: Option<Arc<Reloader>>, tx: mpsc::Sender<(Conn, Peer)>) {
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            a = tcp.accept() => a,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait, as hyper does, rather than spin.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY a small answer written in two parts waits for the
        // client's delayed ACK (about 40 ms on Linux).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let Some(tls) = &tls else {
            if tx.send((Conn::Plain(stream), Peer { addr, cert: None })).await.is_err() {
                return;
            }
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(ClientCert::of(c.as_ref())));
            let _ = tx.send((Conn::Tls(Box::new(stream)), Peer { addr, cert })).await;
        });
    }
}

impl Listener {
    /// The next connection, handshake done.
    pub async fn accept(&mut self) -> (Conn, Peer) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The common name of a DER certificate's subject: the first CN attribute,
/// as a string. The certificate has passed verification; this reads it
/// defensively all the same and answers `None` for anything unexpected.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (cert, _) = Der::seq(der)?;
    let (tbs, _) = Der::seq(cert)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = Der::next(rest)?.1;
    }
    // serialNumber, signature, issuer, validity: skipped.
    for _ in 0..4 {
        rest = Der::next(rest)?.1;
    }
    let (subject, _) = Der::seq(rest)?;
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue)
    let mut rdns = subject;
    while !rdns.is_empty() {
        let ((tag, set), after) = Der::next(rdns)?;
        rdns = after;
        if tag != 0x31 {
            return None;
        }
        let mut atvs = set;
        while !atvs.is_empty() {
            let (atv, after) = Der::seq(atvs)?;
            atvs = after;
            let ((oid_tag, oid), value) = Der::next(atv)?;
            // 2.5.4.3, id-at-commonName
            if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let ((value_tag, bytes), _) = Der::next(value)?;
                return match value_tag {
                    // UTF8String, PrintableString, IA5String; TeletexString read as UTF-8.
                    0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(bytes).ok().map(str::to_string),
                    // BMPString: UTF-16 big-endian.
                    0x1e if bytes.len() % 2 == 0 => String::from_utf16(
                        &bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect::<Vec<_>>(),
                    )
                    .ok(),
                    _ => None,
                };
            }
        }
    }
    None
}

/// Just enough DER to find a certificate's subject.
struct Der;

/// A DER element (its tag and contents) and the input that follows it.
type Element<'a> = ((u8, &'a [u8]), &'a [u8]);

impl Der {
    /// The first element: its tag and contents, and what follows it.
    fn next(input: &[u8]) -> Option<Element<'_>> {
        let (&tag, rest) = input.split_first()?;
        // High tag numbers do not occur where this reads.
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        Some(((tag, contents), after))
    }

    /// The first element, which must be a SEQUENCE.
    fn seq(input: &[u8]) -> Option<(&[u8], &[u8])> {
        match Self::next(input)? {
            ((0x30, contents), after) => Some((contents, after)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reload_takes_changed_files_and_keeps_the_configuration_when_one_is_broken() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let names = ["localhost".to_string()];
        crate::certs::init(dir.path(), &names, &[], false).unwrap();
        let files =
            TlsFiles { cert: dir.path().join("server.pem"), key: dir.path().join("server.key"), client_ca: None };
        let r = Reloader::new(files).unwrap();
        assert!(!r.reload(false).unwrap(), "unchanged files are not read again");
        let first = r.current();
        crate::certs::init(dir.path(), &names, &[], true).unwrap();
        assert!(r.reload(false).unwrap());
        let second = r.current();
        assert!(!Arc::ptr_eq(&first, &second));
        std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
        let e = r.reload(false).unwrap_err().to_string();
        assert!(e.contains("server.key"), "{e}");
        assert!(Arc::ptr_eq(&second, &r.current()), "the configuration in force stays");
        assert!(!r.reload(false).unwrap(), "a broken file is reported once");
        assert!(Reloader::new(TlsFiles { client_ca: Some(dir.path().join("none.pem")), ..r.files.clone() }).is_err());
    }

    #[test]
    fn der_reader_refuses_truncated_and_oversized_input() {
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(subject_common_name(&[0x30, 0x82, 0xff, 0xff, 0x30]), None);
        assert_eq!(subject_common_name(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
