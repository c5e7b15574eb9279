//! Webhooks as GDX sends them to the services it pushes to: Standard Webhooks
//! signatures, and an HTTP client that only connects where it may.
//!
//! A webhook request carries `webhook-id`, `webhook-timestamp` (Unix
//! seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`. A secret written `whsec_<base64>` is used
//! base64-decoded, any other secret as its UTF-8 bytes. Receivers check the
//! signature with [`verify`] (or `gdx webhook verify`).
//!
//! Targets are the services of other departments, named by whoever
//! registers a rule, so the client refuses loopback, private, link-local and
//! other non-public addresses unless the server is configured to allow them
//! ([`target_client`]): checked on every address a name resolves to, which
//! are the only ones it connects to (a name that resolves to a public
//! address once and a private one later is checked each time), on literal
//! addresses in the URL, and on IPv4 addresses inside IPv6 ones. Redirects
//! are not followed and proxies from the environment are not used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a webhook's timestamp may be from the receiver's clock (Standard
/// Webhooks' recommendation), against replays of old requests.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The prefix of a base64-encoded secret.
const SECRET_PREFIX: &str = "whsec_";

/// A webhook signing secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a webhook secret, signature or target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The secret is empty, or `whsec_` followed by invalid base64.
    #[error("the webhook secret is not valid: {0}")]
    Secret(&'static str),
    /// No signature of the header matches the request.
    #[error("no signature matches: the body, id or timestamp was changed, or the secret is another")]
    Mismatch,
    /// The header holds no `v1,` signature.
    #[error("the webhook-signature header holds no v1 signature")]
    NoSignature,
    /// The timestamp is not Unix seconds.
    #[error("the webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    /// The timestamp is too far from now.
    #[error("the webhook-timestamp is {0} s away from now, more than the tolerance")]
    Stale(u64),
    /// The target URL is not one GDX may send to.
    #[error("the webhook URL is refused: {0}")]
    Target(String),
}

impl Secret {
    /// `whsec_<base64>` decoded, or any other text as its bytes.
    pub fn parse(text: &str) -> Result<Secret, WebhookError> {
        let bytes = match text.strip_prefix(SECRET_PREFIX) {
            Some(b64) => {
                BASE64.decode(b64.trim()).map_err(|_| WebhookError::Secret("whsec_ is not followed by base64"))?
            }
            None => text.as_bytes().to_vec(),
        };
        if bytes.is_empty() {
            return Err(WebhookError::Secret("it is empty"));
        }
        Ok(Secret(bytes))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value of a request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", BASE64.encode(self.mac(id, timestamp, body).finalize().into_bytes()))
    }
}

/// Checks a received webhook: some `v1,` signature of the space-separated
/// `signatures` header must be the request's (compared in constant time),
/// and `timestamp` within `tolerance` of `now` (Unix seconds).
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
    now: i64,
    tolerance: Duration,
) -> Result<(), WebhookError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| WebhookError::BadTimestamp)?;
    let mut any = false;
    for candidate in signatures.split_whitespace() {
        let Some(b64) = candidate.strip_prefix("v1,") else { continue };
        any = true;
        if let Ok(bytes) = BASE64.decode(b64)
            && secret.mac(id, ts, body).verify_slice(&bytes).is_ok()
        {
            let away = now.abs_diff(ts);
            if away > tolerance.as_secs() {
                return Err(WebhookError::Stale(away));
            }
            return Ok(());
        }
    }
    Err(if any { WebhookError::Mismatch } else { WebhookError::NoSignature })
}

/// Why GDX does not send to `ip`, or `None` for a public address.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if a == 0 {
        Some("an unspecified address")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("a broadcast or multicast address")
    } else if (a == 192 && b == 0 && ip.octets()[2] == 0) || (a == 198 && (b == 18 || b == 19)) || a >= 240 {
        Some("a reserved address")
    } else {
        None
    }
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // IPv4 inside IPv6: mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::/96), 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refusal_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refusal_v4(Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])));
    }
    if s[0] == 0x2002 {
        return refusal_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() || s[..6] == [0; 6] {
        // :: and the deprecated IPv4-compatible ::a.b.c.d.
        Some("an unspecified or IPv4-compatible address")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("a private address")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// Checks a webhook URL before anything is sent: http or https, a host, no
/// credentials, and (unless `allow_private`) not a refused literal address.
/// Names are checked when they are resolved ([`target_client`]).
pub fn check_url(url: &reqwest::Url, allow_private: bool) -> Result<(), WebhookError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(WebhookError::Target("only http and https URLs are allowed".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(WebhookError::Target("a URL may not carry credentials".into()));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(WebhookError::Target("the URL has no host".into()));
    };
    // IPv6 literals come bracketed; anything else that is not an address is a name.
    let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else { return Ok(()) };
    match refusal(ip) {
        Some(why) if !allow_private => Err(WebhookError::Target(format!("{ip} is {why}"))),
        _ => Ok(()),
    }
}

/// Resolves names to their permitted addresses only.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.iter().copied().filter(|a| allow_private || refusal(a.ip()).is_none()).collect();
            if allowed.is_empty() {
                let why = found.first().and_then(|a| refusal(a.ip())).unwrap_or("not resolvable");
                let error: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(WebhookError::Target(format!("{host} resolves to {why}")));
                return Err(error);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client for webhook targets: names resolved through the address
/// check, no redirects, no proxy, `timeout` for the whole request.
pub fn target_client(allow_private: bool, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .user_agent(concat!("gdx-webhook/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The example of the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_as_the_specification_does() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(secret.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIGNATURE);
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        // Another secret, id, timestamp or body signs differently.
        let raw = Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_ne!(raw.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIGNATURE);
        assert_ne!(secret.sign("msg_other", SPEC_TS, SPEC_BODY), SPEC_SIGNATURE);
        assert_ne!(secret.sign(SPEC_ID, SPEC_TS + 1, SPEC_BODY), SPEC_SIGNATURE);
        assert_ne!(secret.sign(SPEC_ID, SPEC_TS, br#"{"test": 2432232315}"#), SPEC_SIGNATURE);
    }

    #[test]
    fn verifies_and_refuses() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        let ts = SPEC_TS.to_string();
        let check =
            |body: &[u8], header: &str, now: i64| verify(&secret, SPEC_ID, &ts, body, header, now, DEFAULT_TOLERANCE);
        assert_eq!(check(SPEC_BODY, SPEC_SIGNATURE, SPEC_TS), Ok(()));
        assert_eq!(check(SPEC_BODY, SPEC_SIGNATURE, SPEC_TS + 299), Ok(()));
        // Several signatures (a secret being rotated): one matching is enough.
        assert_eq!(check(SPEC_BODY, &format!("v1,AAAA v1a,xyz {SPEC_SIGNATURE}"), SPEC_TS), Ok(()));
        assert_eq!(check(br#"{"test": 1}"#, SPEC_SIGNATURE, SPEC_TS), Err(WebhookError::Mismatch));
        assert_eq!(check(SPEC_BODY, "v1,not-base64!", SPEC_TS), Err(WebhookError::Mismatch));
        assert_eq!(check(SPEC_BODY, "v2,abc", SPEC_TS), Err(WebhookError::NoSignature));
        assert_eq!(check(SPEC_BODY, SPEC_SIGNATURE, SPEC_TS + 301), Err(WebhookError::Stale(301)));
        assert_eq!(check(SPEC_BODY, SPEC_SIGNATURE, SPEC_TS - 400), Err(WebhookError::Stale(400)));
        assert_eq!(
            verify(&secret, SPEC_ID, "soon", SPEC_BODY, SPEC_SIGNATURE, SPEC_TS, DEFAULT_TOLERANCE),
            Err(WebhookError::BadTimestamp)
        );
        let other = Secret::parse("whsec_c2VjcmV0").unwrap();
        assert_eq!(
            verify(&other, SPEC_ID, &ts, SPEC_BODY, SPEC_SIGNATURE, SPEC_TS, DEFAULT_TOLERANCE),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn refuses_bad_secrets() {
        assert!(matches!(Secret::parse(""), Err(WebhookError::Secret(_))));
        assert!(matches!(Secret::parse("whsec_"), Err(WebhookError::Secret(_))));
        assert!(matches!(Secret::parse("whsec_***"), Err(WebhookError::Secret(_))));
        assert!(Secret::parse("plain text secret").is_ok());
    }

    #[test]
    fn refuses_addresses_that_are_not_public() {
        let refused = [
            "127.0.0.1",
            "127.8.9.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
        ];
        for ip in refused {
            assert!(refusal(ip.parse().unwrap()).is_some(), "{ip} should be refused");
        }
        for ip in ["8.8.8.8", "120.79.1.1", "172.32.0.1", "100.128.0.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"] {
            assert_eq!(refusal(ip.parse().unwrap()), None, "{ip} is public");
        }
    }

    #[test]
    fn checks_urls() {
        let check = |u: &str, allow: bool| check_url(&reqwest::Url::parse(u).unwrap(), allow);
        assert!(check("https://svc.example.gov.cn/hook", false).is_ok());
        assert!(check("http://8.8.8.8/hook", false).is_ok());
        for u in ["http://127.0.0.1:9/", "http://[::1]/", "http://[::ffff:7f00:1]/", "http://169.254.169.254/latest"] {
            let err = check(u, false).unwrap_err();
            assert!(matches!(err, WebhookError::Target(_)), "{u}: {err:?}");
            assert!(check(u, true).is_ok(), "{u} allowed by configuration");
        }
        assert!(check("ftp://example.org/", true).is_err());
        assert!(check("https://user:pw@example.org/", true).is_err());
    }

    /// A receiver on loopback answering every request with `status` and `headers`.
    async fn receiver(status: &'static str, headers: &'static str) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut served = 0;
            while let Ok(Ok((mut socket, _))) =
                tokio::time::timeout(Duration::from_millis(1500), listener.accept()).await
            {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let answer = format!("HTTP/1.1 {status}\r\n{headers}content-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
                served += 1;
            }
            served
        });
        (addr, task)
    }

    #[tokio::test]
    async fn the_client_connects_only_where_it_may() {
        crate::install_crypto_provider();
        let (addr, served) = receiver("204 No Content", "").await;
        let by_name = format!("http://localhost:{}/hook", addr.port());
        // Refused: the name resolves to loopback only.
        let strict = target_client(false, Duration::from_secs(5)).unwrap();
        let err = strict.post(&by_name).body("{}").send().await.unwrap_err();
        assert!(err.is_connect() || err.is_request(), "{err:?}");
        assert!(format!("{err:?}").contains("loopback"), "{err:?}");
        // Allowed by configuration, the same request arrives.
        let open = target_client(true, Duration::from_secs(5)).unwrap();
        let answer = open.post(&by_name).body("{}").send().await.unwrap();
        assert_eq!(answer.status(), 204);
        assert_eq!(served.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        crate::install_crypto_provider();
        let (addr, served) = receiver("307 Temporary Redirect", "location: http://169.254.169.254/latest\r\n").await;
        let open = target_client(true, Duration::from_secs(5)).unwrap();
        let answer = open.post(format!("http://{addr}/hook")).body("{}").send().await.unwrap();
        assert_eq!(answer.status(), 307);
        assert_eq!(served.await.unwrap(), 1);
    }
}
