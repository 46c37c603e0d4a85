//! Images from registries, pulled client-side (DESIGN.md "containerd: two instances": the
//! Transfer service of containerd 1.7 ignores the client's resolver settings, so ros fetches
//! manifests and blobs itself and stores them through `import`'s [`Client::store`]).
//!
//! Owns: reference normalisation as Docker does it (`busybox` →
//! `docker.io/library/busybox:latest`), the endpoints tried for a reference (its registry's
//! `mirrors` in order, then the registry; each with the `insecure` flag and credentials of its
//! own `[registries."HOST"]` table, loopback hosts insecure by default as Docker treats
//! 127.0.0.0/8), the choice of the linux/amd64 manifest from an index, and the
//! [`BlobSource`] that streams layers from the registry into the content store chunk by chunk.
//! Uses `oci-client` (rustls with ring; its bearer-token flow with basic credentials, or plain
//! basic auth when the registry asks for that). An `insecure` endpoint is tried over HTTPS
//! without certificate verification first, then over plain HTTP when the TLS connection fails.
//!
//! "Already present" (an image record of the normalised name whose top snapshot exists) skips the
//! registries entirely: a tag is not re-resolved (Kubernetes' `IfNotPresent`).
//!
//! Errors name the reference and every endpoint tried with its own failure; a password never
//! appears in them (each message is scrubbed of it, belt and braces: oci-client does not echo
//! it) nor in logs (the config holds it as a [`Secret`]).
//!
//! Must not: run containers, spawn processes, or reach anything the config does not name.
//! Also owns the node's fallback CA bundle ([`ensure_ca_bundle`]: Mozilla's roots compiled in,
//! written by PID 1 when the node has none — oci-client cannot even build a plain-HTTP client
//! without system roots).
//!
//! Limitations: no per-registry CA or client certificates; layers are fetched one after
//! another; schema 1 manifests are refused.

use super::client::{Client, ClientError};
use super::import::{
    sha256_digest, BlobSource, ConfigBlob, Desc, ImportError, Imported, Index, Manifest, Plan,
    MAX_JSON, MEDIA_INDEX, MEDIA_MANIFEST,
};
use crate::config::schema::Registry;
use crate::config::secret::Secret;
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a TCP (and TLS) connection to a registry may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a registry may stay silent in the middle of a response.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Manifest media types a pull accepts (an index is resolved to its linux/amd64 manifest).
const ACCEPT: [&str; 4] = [
    MEDIA_INDEX[0],
    MEDIA_INDEX[1],
    MEDIA_MANIFEST[0],
    MEDIA_MANIFEST[1],
];

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("pull {reference}: not a valid image reference: {reason}")]
    Reference { reference: String, reason: String },
    #[error("pull {reference}: {}", Attempts(attempts))]
    Registries {
        reference: String,
        attempts: Vec<Attempt>,
    },
    #[error("pull {reference}: {source}")]
    Store {
        reference: String,
        source: ImportError,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// One endpoint that failed, and why (scrubbed of its password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub endpoint: String,
    pub role: Role,
    pub error: String,
}

struct Attempts<'a>(&'a [Attempt]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} {}: {}", a.role, a.endpoint, a.error)?;
        }
        Ok(())
    }
}

/// Whether an endpoint is a mirror or the registry the reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Mirror,
    Registry,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Mirror => "mirror",
            Role::Registry => "registry",
        })
    }
}

/// One place a reference may be pulled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    pub role: Role,
    /// HTTPS without verification, then plain HTTP.
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl Endpoint {
    fn auth(&self) -> RegistryAuth {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => RegistryAuth::Basic(u.clone(), p.expose().to_owned()),
            _ => RegistryAuth::Anonymous,
        }
    }

    fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(p) => p.scrub(text),
            None => text.to_owned(),
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The normalised reference, which is also the image record's name.
    pub name: String,
    /// Where it came from (`None` when it was already present).
    pub endpoint: Option<String>,
    pub imported: Imported,
}

/// The reference as Docker normalises it: `busybox` → `docker.io/library/busybox:latest`,
/// `10.0.2.100:5000/app` → `10.0.2.100:5000/app:latest`.
pub fn normalize(image: &str) -> Result<Reference, PullError> {
    image
        .parse::<Reference>()
        .map_err(|e| PullError::Reference {
            reference: image.to_owned(),
            reason: e.to_string(),
        })
}

/// `localhost`, `127.0.0.0/8` and `::1`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The endpoints for `reference`, in the order they are tried: the mirrors its registry's table
/// names, then the registry. Each carries the settings of its own table.
pub fn endpoints(reference: &Reference, registries: &BTreeMap<String, Registry>) -> Vec<Endpoint> {
    let registry = reference.registry();
    let endpoint = |host: &str, role: Role| {
        let own = registries.get(host);
        Endpoint {
            host: host.to_owned(),
            role,
            insecure: own.is_some_and(|r| r.insecure) || is_loopback(host),
            username: own.and_then(|r| r.username.clone()),
            password: own.and_then(|r| r.password.clone()),
        }
    };
    let mut out: Vec<Endpoint> = registries
        .get(registry)
        .map(|r| r.mirrors.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|m| endpoint(m, Role::Mirror))
        .collect();
    out.push(endpoint(registry, Role::Registry));
    out
}

/// The protocols to try for an endpoint, in order.
fn protocols(ep: &Endpoint) -> Vec<(ClientProtocol, bool)> {
    if ep.insecure {
        vec![(ClientProtocol::Https, true), (ClientProtocol::Http, false)]
    } else {
        vec![(ClientProtocol::Https, false)]
    }
}

/// Where PID 1 writes its compiled-in CA bundle when the node has none (a path
/// rustls-native-certs probes on Debian-like systems).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Makes sure the node has CA certificates: unless rustls-native-certs already finds some,
/// writes Mozilla's root certificates (the `webpki-root-certs` crate, compiled into ros) as PEM
/// to `path`, atomically. Returns whether it wrote. PID 1 calls it before workloads are pulled.
///
/// Why: `oci-client` always builds a default `reqwest::Client` too, whose rustls platform
/// verifier needs system roots — without any it panics ("No CA certificates were loaded from the
/// system"), even for a plain-HTTP registry. The bundle also makes verified HTTPS work.
pub fn ensure_ca_bundle(path: &Path) -> std::io::Result<bool> {
    if !rustls_native_certs::load_native_certs().certs.is_empty() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem_bundle(webpki_root_certs::TLS_SERVER_ROOT_CERTS))?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// DER certificates as one PEM file.
fn pem_bundle(certs: &[rustls::pki_types::CertificateDer<'_>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for cert in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// The registry client for one endpoint over one protocol.
///
/// `oci_client::Client::try_from` also builds a default `reqwest::Client`, which panics when
/// the node has no CA certificates (see [`ensure_ca_bundle`]); that case is an error here, and
/// any other panic in the builder is caught and turned into one as well.
/// (`oci_client::Client::new` is not used: on a builder error it falls back to a default client.)
fn oci_client(protocol: ClientProtocol, skip_verify: bool) -> Result<oci_client::Client, String> {
    // reqwest panics when no rustls provider is installed; installing twice is a no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if rustls_native_certs::load_native_certs().certs.is_empty() {
        return Err(format!(
            "no CA certificates on this node (none in the system paths, {CA_BUNDLE} missing)"
        ));
    }
    let config = ClientConfig {
        protocol,
        accept_invalid_certificates: skip_verify,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("ros/", env!("CARGO_PKG_VERSION")),
        platform_resolver: None,
        ..ClientConfig::default()
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        oci_client::Client::try_from(config)
    })) {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("HTTP client: {}", chain(&e))),
        Err(_) => Err("HTTP client: the TLS setup panicked (see the log)".into()),
    }
}

/// An error with its causes (`error sending request: … : connection refused`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// A failure that another protocol may not have (TCP or TLS connection).
fn is_connect(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(r) if r.is_connect())
}

/// Why an endpoint failed before anything was stored.
enum Fetch {
    Oci(OciDistributionError),
    Bad(String),
}

impl From<OciDistributionError> for Fetch {
    fn from(e: OciDistributionError) -> Self {
        Fetch::Oci(e)
    }
}

impl Fetch {
    fn text(&self) -> String {
        match self {
            Fetch::Oci(OciDistributionError::UnauthorizedError { url }) => format!(
                "{url}: not authorized (HTTP 401): check this registry's username and password"
            ),
            Fetch::Oci(e) => chain(e),
            Fetch::Bad(s) => s.clone(),
        }
    }
}

/// The top-level fields that tell an index from a manifest.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
}

fn probe(digest: &str, body: &[u8]) -> Result<Probe, Fetch> {
    let p: Probe =
        serde_json::from_slice(body).map_err(|e| Fetch::Bad(format!("manifest {digest}: {e}")))?;
    if p.schema_version != Some(2) {
        return Err(Fetch::Bad(format!(
            "manifest {digest}: schema version {:?} is not supported (only 2)",
            p.schema_version
        )));
    }
    Ok(p)
}

fn desc(media_type: String, digest: String, body: &[u8]) -> Desc {
    Desc {
        media_type,
        digest,
        size: i64::try_from(body.len()).unwrap_or(i64::MAX),
        annotations: HashMap::new(),
        platform: None,
    }
}

/// Index (if any), manifest and config of `reference` at one endpoint, as a plan, with the
/// bytes of those small blobs.
async fn resolve(
    oci: &oci_client::Client,
    reference: &Reference,
    auth: &RegistryAuth,
    name: &str,
) -> Result<(Plan, HashMap<String, Vec<u8>>), Fetch> {
    let mut held = HashMap::new();
    let (body, digest) = oci.pull_manifest_raw(reference, auth, &ACCEPT).await?;
    let top = probe(&digest, &body)?;
    let is_index = top.manifests.is_some()
        || top
            .media_type
            .as_deref()
            .is_some_and(|m| MEDIA_INDEX.contains(&m));
    let (target, index_pos, manifest, body) = if is_index {
        let index: Index = serde_json::from_slice(&body)
            .map_err(|e| Fetch::Bad(format!("index {digest}: {e}")))?;
        let (pos, chosen) = index
            .linux_amd64()
            .ok_or_else(|| Fetch::Bad(format!("index {digest}: no linux/amd64 manifest")))?;
        let chosen = chosen.clone();
        let by_digest = reference.clone_with_digest(chosen.digest.clone());
        let (mbody, mdigest) = oci.pull_manifest_raw(&by_digest, auth, &ACCEPT).await?;
        if sha256_digest(&mbody) != chosen.digest || mdigest != chosen.digest {
            return Err(Fetch::Bad(format!(
                "manifest {}: the registry sent {}",
                chosen.digest,
                sha256_digest(&mbody)
            )));
        }
        let mprobe = probe(&chosen.digest, &mbody)?;
        let media = mprobe
            .media_type
            .filter(|m| !m.is_empty())
            .unwrap_or(chosen.media_type);
        let index_media = top
            .media_type
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| MEDIA_INDEX[0].to_owned());
        let target = desc(index_media, digest.clone(), &body);
        held.insert(digest, body.to_vec());
        (target, Some(pos), desc(media, chosen.digest, &mbody), mbody)
    } else {
        if sha256_digest(&body) != digest {
            return Err(Fetch::Bad(format!(
                "manifest {digest}: the registry sent {}",
                sha256_digest(&body)
            )));
        }
        let media = top
            .media_type
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| MEDIA_MANIFEST[0].to_owned());
        let d = desc(media, digest, &body);
        (d.clone(), None, d, body)
    };
    if !MEDIA_MANIFEST.contains(&manifest.media_type.as_str()) {
        return Err(Fetch::Bad(format!(
            "manifest {}: unsupported media type {}",
            manifest.digest, manifest.media_type
        )));
    }
    let parsed: Manifest = serde_json::from_slice(&body)
        .map_err(|e| Fetch::Bad(format!("manifest {}: {e}", manifest.digest)))?;
    if u64::try_from(parsed.config.size).map_or(true, |s| s > MAX_JSON) {
        return Err(Fetch::Bad(format!(
            "config {}: {} bytes is too large",
            parsed.config.digest, parsed.config.size
        )));
    }
    let mut config = Vec::new();
    oci.pull_blob(reference, parsed.config.digest.as_str(), &mut config)
        .await?;
    let cfg: ConfigBlob = serde_json::from_slice(&config)
        .map_err(|e| Fetch::Bad(format!("config {}: {e}", parsed.config.digest)))?;
    held.insert(parsed.config.digest.clone(), config);
    held.insert(manifest.digest.clone(), body.to_vec());
    let plan = Plan::new(name.to_owned(), target, index_pos, manifest, parsed, &cfg)
        .map_err(Fetch::Bad)?;
    Ok((plan.action("pull"), held))
}

/// Blobs from one registry endpoint: the small ones already fetched, layers streamed.
struct RegistrySource {
    oci: oci_client::Client,
    reference: Reference,
    held: HashMap<String, Vec<u8>>,
    open: Option<(String, SizedStream)>,
    buf: Vec<u8>,
}

impl RegistrySource {
    fn failed(image: &str, desc: &Desc, reason: String) -> ImportError {
        ImportError::Source {
            image: image.to_owned(),
            digest: desc.digest.clone(),
            reason,
        }
    }
}

impl BlobSource for RegistrySource {
    async fn read(
        &mut self,
        image: &str,
        desc: &Desc,
        pos: u64,
        len: usize,
    ) -> Result<Vec<u8>, ImportError> {
        if let Some(bytes) = self.held.get(&desc.digest) {
            let start = usize::try_from(pos).unwrap_or(usize::MAX).min(bytes.len());
            let end = start.saturating_add(len).min(bytes.len());
            return Ok(bytes[start..end].to_vec());
        }
        let current = self.open.as_ref().map(|(d, _)| d.as_str());
        if pos == 0 || current != Some(desc.digest.as_str()) {
            if pos != 0 {
                return Err(Self::failed(image, desc, format!("read from {pos} first")));
            }
            let stream = self
                .oci
                .pull_blob_stream(&self.reference, desc.digest.as_str())
                .await
                .map_err(|e| Self::failed(image, desc, chain(&e)))?;
            self.open = Some((desc.digest.clone(), stream));
            self.buf.clear();
        }
        while self.buf.len() < len {
            let Some((_, stream)) = self.open.as_mut() else {
                break;
            };
            match stream.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => return Err(Self::failed(image, desc, chain(&e))),
                None => break,
            }
        }
        let n = len.min(self.buf.len());
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }
}

/// Why one endpoint failed.
enum Failure {
    /// The registry side: try the next endpoint.
    Registry(String),
    /// containerd: no other endpoint will do better.
    Store(ImportError),
}

impl Client {
    /// Pulls `image` into this client's namespace and unpacks it, trying the endpoints
    /// [`endpoints`] gives in order; nothing is fetched when it is already present. The image
    /// record is named by the normalised reference ([`Pulled::name`]).
    pub async fn pull(
        &self,
        image: &str,
        registries: &BTreeMap<String, Registry>,
    ) -> Result<Pulled, PullError> {
        let reference = normalize(image)?;
        let name = reference.to_string();
        let store_err = |source| PullError::Store {
            reference: name.clone(),
            source,
        };
        if self.image_present(&name).await.map_err(store_err)? {
            log::info!("pull {name}: already present in {}", self.namespace());
            let imported = Imported {
                name: name.clone(),
                digest: String::new(),
                already_present: true,
                blobs_written: 0,
                layers_unpacked: 0,
            };
            return Ok(Pulled {
                name,
                endpoint: None,
                imported,
            });
        }
        let mut attempts = Vec::new();
        for ep in endpoints(&reference, registries) {
            let started = Instant::now();
            log::info!("pull {name}: trying {} {}", ep.role, ep.host);
            match self.pull_from(&reference, &name, &ep).await {
                Ok(imported) => {
                    log::info!(
                        "pull {name}: done from {} {} in {:.3}s ({} blobs written, {} layers unpacked)",
                        ep.role,
                        ep.host,
                        started.elapsed().as_secs_f64(),
                        imported.blobs_written,
                        imported.layers_unpacked
                    );
                    return Ok(Pulled {
                        name,
                        endpoint: Some(ep.host),
                        imported,
                    });
                }
                Err(Failure::Registry(error)) => {
                    let error = ep.scrub(&error);
                    // Info, not warn: the caller reports the whole error once; this line tells
                    // of a mirror that failed before another endpoint served the pull.
                    log::info!("pull {name}: {} {}: {error}", ep.role, ep.host);
                    attempts.push(Attempt {
                        endpoint: ep.host,
                        role: ep.role,
                        error,
                    });
                }
                Err(Failure::Store(source)) => {
                    return Err(PullError::Store {
                        reference: name,
                        source,
                    });
                }
            }
        }
        Err(PullError::Registries {
            reference: name,
            attempts,
        })
    }

    async fn pull_from(
        &self,
        reference: &Reference,
        name: &str,
        ep: &Endpoint,
    ) -> Result<Imported, Failure> {
        let mut reference = reference.clone();
        if ep.role == Role::Mirror {
            reference.set_mirror_registry(ep.host.clone());
        }
        let auth = ep.auth();
        let protocols = protocols(ep);
        let last = protocols.len().saturating_sub(1);
        for (i, (protocol, skip_verify)) in protocols.into_iter().enumerate() {
            let scheme = if protocol == ClientProtocol::Http {
                "http"
            } else {
                "https"
            };
            let oci = match oci_client(protocol, skip_verify) {
                Ok(c) => c,
                Err(e) => return Err(Failure::Registry(format!("{scheme}: {e}"))),
            };
            let (plan, held) = match resolve(&oci, &reference, &auth, name).await {
                Ok(r) => r,
                Err(Fetch::Oci(e)) if i < last && is_connect(&e) => {
                    log::debug!(
                        "pull {name}: {}: {scheme}: {}",
                        ep.host,
                        ep.scrub(&chain(&e))
                    );
                    continue;
                }
                Err(e) => return Err(Failure::Registry(format!("{scheme}: {}", e.text()))),
            };
            let mut src = RegistrySource {
                oci,
                reference: reference.clone(),
                held,
                open: None,
                buf: Vec::new(),
            };
            return match self.store(&plan, &mut src).await {
                Ok(imported) => Ok(imported),
                Err(ImportError::Source { digest, reason, .. }) => Err(Failure::Registry(format!(
                    "{scheme}: blob {digest}: {reason}"
                ))),
                Err(e) => Err(Failure::Store(e)),
            };
        }
        Err(Failure::Registry("no protocol to try".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_references_normalise_like_docker() {
        let n = |s: &str| normalize(s).unwrap().to_string();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("library/busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("ros/app"), "docker.io/ros/app:latest");
        assert_eq!(n("10.0.2.100:5000/ros/app:1"), "10.0.2.100:5000/ros/app:1");
        assert_eq!(n("localhost/app"), "localhost/app:latest");
        assert_eq!(n("example.invalid/x:1"), "example.invalid/x:1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(n(&format!("quay.io/a/b@{d}")), format!("quay.io/a/b@{d}"));
        // The bundled-name helper agrees on everything it can name.
        for s in ["busybox", "ros/app", "10.0.2.100:5000/ros/app:1"] {
            assert_eq!(n(s), super::super::bundled::normalize(s), "{s}");
        }
        let err = normalize("has space").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("pull has space: not a valid image reference"),
            "{err}"
        );
    }

    fn registries() -> BTreeMap<String, Registry> {
        BTreeMap::from([
            (
                "example.invalid".to_owned(),
                Registry {
                    mirrors: vec!["127.0.0.1:5001".into(), "mirror.example:5000".into()],
                    username: Some("u".into()),
                    password: Some(Secret::new("registry-pw")),
                    ..Registry::default()
                },
            ),
            (
                "mirror.example:5000".to_owned(),
                Registry {
                    insecure: true,
                    ..Registry::default()
                },
            ),
        ])
    }

    #[test]
    fn test_mirrors_come_first_in_order_with_their_own_settings() {
        let r = normalize("example.invalid/x:1").unwrap();
        let eps = endpoints(&r, &registries());
        let hosts: Vec<(&str, Role, bool)> = eps
            .iter()
            .map(|e| (e.host.as_str(), e.role, e.insecure))
            .collect();
        assert_eq!(
            hosts,
            [
                ("127.0.0.1:5001", Role::Mirror, true),
                ("mirror.example:5000", Role::Mirror, true),
                ("example.invalid", Role::Registry, false),
            ]
        );
        // The registry's credentials stay with the registry.
        assert_eq!(eps[0].username, None);
        assert_eq!(eps[1].password, None);
        assert_eq!(eps[2].username.as_deref(), Some("u"));
        assert!(matches!(eps[2].auth(), RegistryAuth::Basic(ref u, _) if u == "u"));
        assert_eq!(eps[0].auth(), RegistryAuth::Anonymous);
        // No table: the registry alone, secure unless loopback.
        let eps = endpoints(&normalize("busybox").unwrap(), &registries());
        assert_eq!(eps.len(), 1);
        assert_eq!(
            (eps[0].host.as_str(), eps[0].insecure),
            ("docker.io", false)
        );
    }

    #[test]
    fn test_loopback_hosts_are_recognised() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "10.0.2.100:5000",
            "docker.io",
            "[fd00::1]:5000",
            "localhost.example",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn test_errors_list_every_endpoint_and_hide_the_password() {
        let eps = endpoints(&normalize("example.invalid/x:1").unwrap(), &registries());
        let err = PullError::Registries {
            reference: "example.invalid/x:1".into(),
            attempts: eps
                .iter()
                .map(|e| Attempt {
                    endpoint: e.host.clone(),
                    role: e.role,
                    error: e.scrub("echoed registry-pw back"),
                })
                .collect(),
        };
        let text = err.to_string();
        assert_eq!(
            text,
            "pull example.invalid/x:1: mirror 127.0.0.1:5001: echoed registry-pw back; \
             mirror mirror.example:5000: echoed registry-pw back; \
             registry example.invalid: echoed <redacted> back"
        );
        assert!(!format!("{eps:?}").contains("registry-pw"));
    }

    #[test]
    fn test_ca_bundle_is_pem_that_rustls_reads_back() {
        let certs = &webpki_root_certs::TLS_SERVER_ROOT_CERTS[..3];
        let pem = pem_bundle(certs);
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 3);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.crt");
        std::fs::write(&path, &pem).unwrap();
        use rustls::pki_types::pem::PemObject;
        let back: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.as_slice(), certs);
    }
}
