//! The CLI's connection to the daemon: the socket path (`/run/ros/ros.sock`, or `ROS_SOCKET`),
//! a small single-threaded tokio runtime per command, the gRPC channel over the unix socket, and
//! turning what goes wrong into one clear line.
//!
//! Owns: `Failure` (what the user is told, and the exit status) for everything remote: the daemon
//! not reachable at a path (with the reason: no such socket, permission denied by the socket's
//! mode, …) and a refused call (the server's message as is, e.g. `ros API: peer uid 1000 is not
//! root`).
//! Must not: know any command (the `remote` and `node` modules do).

use std::future::Future;
use std::path::{Path, PathBuf};

use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::api::proto::config_client::ConfigClient;
use crate::api::proto::services_client::ServicesClient;
use crate::api::proto::system_client::SystemClient;

/// The environment variable that points the CLI at another socket (tests, containers that mount
/// the socket elsewhere).
pub const SOCKET_ENV: &str = "ROS_SOCKET";

/// The socket the CLI talks to.
pub fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::api::SOCKET))
}

/// Why a remote command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No daemon answers at the socket.
    #[error("the ros daemon is not reachable at {}: {reason}", path.display())]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why (the innermost OS error, when there is one).
        reason: String,
    },
    /// The daemon refused or failed the call; `message` is the server's.
    #[error("{message}")]
    Refused {
        /// The gRPC code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// A local problem (a file to read, the editor, the runtime).
    #[error("{0}")]
    Local(String),
    /// Bad usage (exit 2).
    #[error("{0}")]
    Usage(String),
}

impl Failure {
    /// The exit status: 2 for bad usage, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Unreachable { .. } | Failure::Refused { .. } | Failure::Local(_) => 1,
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Refused {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// The innermost error's text: for a failed connect, the OS error.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::PermissionDenied {
            return format!("{text} (the API is for root only)");
        }
    }
    text
}

/// A connected channel to the daemon.
#[derive(Clone, Debug)]
pub struct Conn {
    channel: Channel,
}

impl Conn {
    /// Connects to the daemon at `path`.
    pub async fn connect(path: &Path) -> Result<Conn, Failure> {
        let endpoint = Endpoint::from_static("http://ros.sock");
        let socket = path.to_path_buf();
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| Failure::Unreachable {
                path: path.to_path_buf(),
                reason: innermost(&e),
            })?;
        Ok(Conn { channel })
    }

    /// The Config service.
    pub fn config(&self) -> ConfigClient<Channel> {
        ConfigClient::new(self.channel.clone())
    }

    /// The Services service.
    pub fn services(&self) -> ServicesClient<Channel> {
        ServicesClient::new(self.channel.clone())
    }

    /// The System service.
    pub fn system(&self) -> SystemClient<Channel> {
        SystemClient::new(self.channel.clone())
    }
}

/// Runs `f` on a fresh single-threaded runtime, connected to the daemon at `path`.
pub fn run<T, F, Fut>(path: &Path, f: F) -> Result<T, Failure>
where
    F: FnOnce(Conn) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Local(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let conn = Conn::connect(path).await?;
        f(conn).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_is_reported_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ros.sock");
        let e = run(&path, |_conn| async { Ok(()) }).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the ros daemon is not reachable at {}: No such file or directory (os error 2)",
                path.display()
            )
        );
        assert_eq!(e.exit_code(), 1);
    }
}
