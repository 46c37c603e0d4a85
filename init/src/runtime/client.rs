//! A connection to one containerd instance, bound to one containerd namespace (and, while an
//! import runs, to one lease).
//!
//! Owns the gRPC channel (`containerd_client::connect` over the unix socket, tonic from
//! `containerd_client::tonic`) and the interceptor that stamps every request with the
//! `containerd-namespace` header (and `containerd-lease` when a lease is held). The service
//! clients are handed out from here so no other module builds a request without a namespace.
//!
//! Must not: spawn processes, block the runtime, or know what is imported or run (the verbs live
//! in `import`, `containers` and `logs`, each as its own `impl Client` block). Must be used from
//! inside a tokio runtime.

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, tasks_client::TasksClient, version_client::VersionClient,
};
use containerd_client::services::v1::{CreateRequest, DeleteRequest};
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::service::interceptor::InterceptedService;
use containerd_client::tonic::service::Interceptor;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Request, Status};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The snapshotter every ros container and image uses.
pub const SNAPSHOTTER: &str = "overlayfs";

/// Header containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Header containerd reads the lease from.
const LEASE_HEADER: &str = "containerd-lease";

/// A containerd RPC that failed; boxed because `Status` is large.
pub type Rpc = Box<Status>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("containerd at {socket}: cannot connect: {source}")]
    Connect {
        socket: PathBuf,
        source: containerd_client::tonic::transport::Error,
    },
    #[error("containerd namespace `{namespace}`: not a valid name (letters, digits, `._-` between them)")]
    Namespace { namespace: String },
    #[error("containerd at {socket}: {op}: {source}")]
    Rpc {
        socket: PathBuf,
        op: &'static str,
        source: Rpc,
    },
}

/// Stamps the namespace (and lease) headers on every request.
#[derive(Clone, Debug)]
pub struct Stamp {
    namespace: MetadataValue<Ascii>,
    lease: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Stamp {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let md = req.metadata_mut();
        md.insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some(lease) = &self.lease {
            md.insert(LEASE_HEADER, lease.clone());
        }
        Ok(req)
    }
}

/// A service client whose requests carry the namespace.
pub type Svc = InterceptedService<Channel, Stamp>;

/// containerd's rule for namespace names and container ids (`identifiers.Validate`): labels of letters and digits
/// joined by single `.`, `_` or `-`, at most 76 characters.
pub fn valid_identifier(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 76
        && ns
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// One containerd instance, one namespace.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
    stamp: Stamp,
}

impl Client {
    /// Connects to the containerd listening on `socket`, for `namespace` (created by containerd
    /// on first use).
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, ClientError> {
        let stamp = stamp(namespace, None)?;
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: socket.to_owned(),
                    source,
                })?;
        Ok(Client {
            channel,
            socket: socket.to_owned(),
            namespace: namespace.to_owned(),
            stamp,
        })
    }

    /// The same connection for another namespace.
    pub fn with_namespace(&self, namespace: &str) -> Result<Self, ClientError> {
        Ok(Client {
            channel: self.channel.clone(),
            socket: self.socket.clone(),
            namespace: namespace.to_owned(),
            stamp: stamp(namespace, None)?,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's version (`Version` RPC; needs no namespace but carries it anyway).
    pub async fn version(&self) -> Result<String, ClientError> {
        let v = VersionClient::with_interceptor(self.channel.clone(), self.stamp.clone())
            .version(())
            .await
            .map_err(|e| self.rpc("Version", e))?;
        Ok(v.into_inner().version)
    }

    /// Takes a lease that expires by itself after `expire` (should ros die holding it), and
    /// returns a client whose requests carry it. Content and snapshots made under it are safe
    /// from garbage collection until [`Lease::release`].
    pub async fn lease(&self, expire: Duration) -> Result<Lease, ClientError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("ros-{}-{}", now.as_nanos(), std::process::id());
        let until = super::logs::rfc3339(SystemTime::now() + expire);
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), until)]);
        LeasesClient::with_interceptor(self.channel.clone(), self.stamp.clone())
            .create(CreateRequest {
                id: id.clone(),
                labels,
            })
            .await
            .map_err(|e| self.rpc("Leases.Create", e))?;
        let mut client = self.clone();
        client.stamp.lease = Some(header_value(&id).ok_or_else(|| ClientError::Namespace {
            namespace: id.clone(),
        })?);
        Ok(Lease { id, client })
    }

    pub(crate) fn rpc(&self, op: &'static str, status: Status) -> ClientError {
        ClientError::Rpc {
            socket: self.socket.clone(),
            op,
            source: Box::new(status),
        }
    }

    pub(crate) fn content(&self) -> ContentClient<Svc> {
        ContentClient::with_interceptor(self.channel.clone(), self.stamp.clone())
    }
    pub(crate) fn images(&self) -> ImagesClient<Svc> {
        ImagesClient::with_interceptor(self.channel.clone(), self.stamp.clone())
    }
    pub(crate) fn snapshots(&self) -> SnapshotsClient<Svc> {
        SnapshotsClient::with_interceptor(self.channel.clone(), self.stamp.clone())
    }
    pub(crate) fn diff(&self) -> DiffClient<Svc> {
        DiffClient::with_interceptor(self.channel.clone(), self.stamp.clone())
    }
    pub(crate) fn containers(&self) -> ContainersClient<Svc> {
        ContainersClient::with_interceptor(self.channel.clone(), self.stamp.clone())
    }
    pub(crate) fn tasks(&self) -> TasksClient<Svc> {
        TasksClient::with_interceptor(self.channel.clone(), self.stamp.clone())
    }
}

/// A lease held in containerd, with a client that works under it.
#[derive(Debug)]
pub struct Lease {
    id: String,
    client: Client,
}

impl Lease {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client whose requests carry the lease.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Deletes the lease (what it protected is then kept only by real references).
    pub async fn release(self) -> Result<(), ClientError> {
        let mut plain = self.client.clone();
        plain.stamp.lease = None;
        LeasesClient::with_interceptor(plain.channel.clone(), plain.stamp.clone())
            .delete(DeleteRequest {
                id: self.id.clone(),
                sync: false,
            })
            .await
            .map_err(|e| plain.rpc("Leases.Delete", e))?;
        Ok(())
    }
}

fn header_value(text: &str) -> Option<MetadataValue<Ascii>> {
    text.parse().ok()
}

fn stamp(namespace: &str, lease: Option<&str>) -> Result<Stamp, ClientError> {
    let bad = || ClientError::Namespace {
        namespace: namespace.to_owned(),
    };
    if !valid_identifier(namespace) {
        return Err(bad());
    }
    Ok(Stamp {
        namespace: header_value(namespace).ok_or_else(bad)?,
        lease: match lease {
            Some(l) => Some(header_value(l).ok_or_else(bad)?),
            None => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_namespace_names_follow_containerd_rules() {
        for ok in ["system", "user", "k8s.io", "a-b_c.d", "x1"] {
            assert!(valid_identifier(ok), "{ok}");
        }
        for bad in ["", "a..b", "-a", "a-", "a b", "ä", &"x".repeat(77)] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn test_stamp_sets_namespace_and_lease_headers() {
        let mut s = stamp("system", Some("ros-1")).unwrap();
        let req = s.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get(NAMESPACE_HEADER).unwrap(), "system");
        assert_eq!(req.metadata().get(LEASE_HEADER).unwrap(), "ros-1");
        let err = stamp("bad ns", None).unwrap_err();
        assert!(matches!(err, ClientError::Namespace { ref namespace } if namespace == "bad ns"));
    }

    #[tokio::test]
    async fn test_connect_to_missing_socket_names_the_socket() {
        let err = Client::connect(Path::new("/nonexistent/ros-test.sock"), "system")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("containerd at /nonexistent/ros-test.sock"),
            "{err}"
        );
    }
}
