//! The gRPC server of the admin API on its unix socket.
//!
//! Owns: binding the socket (a temporary name, chmod to the mode — 0600 — and only then renamed
//! over the real path, which also replaces a stale socket, so the socket is never reachable with a
//! wider mode), the peer check on every call (SO_PEERCRED, taken by tonic when it accepts the
//! connection: a peer that is not uid 0 gets `PERMISSION_DENIED: ros API: peer uid N is not
//! root`), dispatching the three services by path (tonic's router would pull in axum), and
//! turning engine and node errors into gRPC statuses with exhaustive matches.
//! Must not: apply changes itself (the `Engine` does) or touch the node (the `Node` does).

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::engine::{self, ChangeError, Edit, Engine, Options};
use super::node::{LogQuery, Node, NodeError, ServiceAction};
use super::proto;
use super::proto::config_server::{Config as ConfigService, ConfigServer};
use super::proto::services_server::{Services as ServicesService, ServicesServer};
use super::proto::system_server::{System as SystemService, SystemServer};
use crate::config::generations::now_unix_ms;
use crate::power::PowerAction;

/// Where the API listens on a node.
pub const SOCKET: &str = "/run/ros/ros.sock";

/// Where and how to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The socket path (`SOCKET` on a node).
    pub socket: PathBuf,
    /// The socket's mode: 0600 on a node. Tests relax it to reach the peer check behind it.
    pub mode: u32,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            socket: PathBuf::from(SOCKET),
            mode: 0o600,
        }
    }
}

/// Why the server could not listen or serve.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Creating, binding, chmod-ing or renaming the socket failed.
    #[error("ros API: {op} {path}: {source}")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("ros API on {path}: {source}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: tonic::transport::Error,
    },
}

/// The bound socket, ready to serve.
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Listener {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds the socket with `options.mode` before anyone can reach it, replacing a stale one.
/// Must be called inside a tokio runtime.
pub fn bind(options: &ServeOptions) -> Result<Listener, ApiError> {
    let path = options.socket.clone();
    let err = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| ApiError::Socket {
            op,
            path: p,
            source,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err("create", &dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ros.sock".to_string());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(err("bind", &tmp))?;
    let ready = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(options.mode))
            .map_err(err("chmod", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(err("rename into place", &path))?;
        std_listener
            .set_nonblocking(true)
            .map_err(err("set non-blocking", &path))?;
        tokio::net::UnixListener::from_std(std_listener).map_err(err("listen", &path))
    })();
    match ready {
        Ok(listener) => Ok(Listener { listener, path }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    let node = Arc::clone(engine.node());
    let router = Router {
        config: ConfigServer::new(ConfigApi {
            engine: Arc::clone(&engine),
        }),
        services: ServicesServer::new(ServicesApi {
            node: Arc::clone(&node),
        }),
        system: SystemServer::new(SystemApi { engine, node }),
    };
    let path = listener.path.clone();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener.listener);
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(router, incoming, shutdown)
        .await
        .map_err(|source| ApiError::Serve { path, source })
}

/// The peer check: only root may use the API. `uid` is the peer's SO_PEERCRED uid.
pub fn check_peer(uid: Option<u32>) -> Result<(), Status> {
    match uid {
        Some(0) => Ok(()),
        Some(uid) => Err(Status::permission_denied(format!(
            "ros API: peer uid {uid} is not root"
        ))),
        None => Err(Status::permission_denied(
            "ros API: the peer's credentials are unknown (SO_PEERCRED failed); refused",
        )),
    }
}

/// Checks the peer of every call, then hands it to the service its path names.
#[derive(Clone)]
struct Router {
    config: ConfigServer<ConfigApi>,
    services: ServicesServer<ServicesApi>,
    system: SystemServer<SystemApi>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid());
        if let Err(status) = check_peer(uid) {
            log::warn!("{}", status.message());
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let path = req.uri().path();
        if path.starts_with("/ros.v1.Config/") {
            let mut svc = self.config.clone();
            Box::pin(async move { tower::Service::call(&mut svc, req).await })
        } else if path.starts_with("/ros.v1.Services/") {
            let mut svc = self.services.clone();
            Box::pin(async move { tower::Service::call(&mut svc, req).await })
        } else if path.starts_with("/ros.v1.System/") {
            let mut svc = self.system.clone();
            Box::pin(async move { tower::Service::call(&mut svc, req).await })
        } else {
            let status = Status::unimplemented(format!("ros API: no method {path}"));
            Box::pin(async move { Ok(status.into_http()) })
        }
    }
}

/// A change error as a gRPC status; the message is the error's text.
fn change_status(e: ChangeError) -> Status {
    let msg = e.to_string();
    match e {
        ChangeError::Config(_) | ChangeError::KeyPath { .. } => Status::invalid_argument(msg),
        ChangeError::Stale { .. }
        | ChangeError::TrialPending { .. }
        | ChangeError::NothingToConfirm
        | ChangeError::NothingToRollBack { .. } => Status::failed_precondition(msg),
        ChangeError::NoSuchGeneration { .. } => Status::not_found(msg),
        ChangeError::Store(_) => Status::internal(msg),
        ChangeError::Reconcile { .. } => Status::aborted(msg),
    }
}

/// A node error as a gRPC status.
fn node_status(e: NodeError) -> Status {
    let msg = e.to_string();
    match e {
        NodeError::NotFound { .. } => Status::not_found(msg),
        NodeError::Failed { .. } => Status::aborted(msg),
        NodeError::Unavailable { .. } => Status::failed_precondition(msg),
    }
}

fn options(o: Option<proto::ChangeOptions>) -> Options {
    let o = o.unwrap_or_default();
    Options {
        dry_run: o.dry_run,
        try_for: (o.try_ms > 0).then(|| Duration::from_millis(o.try_ms)),
    }
}

fn change_reply(o: engine::Outcome) -> proto::ChangeReply {
    proto::ChangeReply {
        generation: o.generation,
        previous: o.previous,
        plan: o.plan,
        changed: o.changed,
        dry_run: o.dry_run,
        created: o.created,
        try_deadline_unix_ms: o.try_deadline_unix_ms,
    }
}

fn log_query(r: proto::LogsRequest) -> LogQuery {
    LogQuery {
        name: (!r.name.is_empty()).then_some(r.name),
        follow: r.follow,
        tail: usize::try_from(r.tail).ok(),
    }
}

type LogLines = Pin<Box<dyn futures::Stream<Item = Result<proto::LogLine, Status>> + Send>>;

async fn logs(node: &Arc<dyn Node>, r: proto::LogsRequest) -> Result<LogLines, Status> {
    let stream = node.logs(log_query(r)).await.map_err(node_status)?;
    Ok(Box::pin(stream.map(Ok)))
}

/// `ros.v1.Config`.
struct ConfigApi {
    engine: Arc<Engine>,
}

impl ConfigApi {
    async fn change(
        &self,
        edit: Edit,
        opts: Option<proto::ChangeOptions>,
    ) -> Result<Response<proto::ChangeReply>, Status> {
        // In its own task: a client that goes away mid-change (which drops this future) must
        // not cut the change short between writing the generation and reconciling it.
        let engine = Arc::clone(&self.engine);
        let options = options(opts);
        tokio::spawn(async move { engine.change(edit, options).await })
            .await
            .map_err(|e| Status::internal(format!("config change: {e}")))?
            .map(|o| Response::new(change_reply(o)))
            .map_err(change_status)
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetReply>, Status> {
        let r = request.into_inner();
        let (generation, table) = if r.local {
            let (n, text) = self.engine.local().await;
            if r.key.is_empty() {
                // The layer as written, comments and all.
                return Ok(Response::new(proto::GetReply {
                    value: text,
                    generation: n,
                }));
            }
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| Status::internal(format!("local layer: {e}")))?;
            (n, table)
        } else {
            let (n, config) = self.engine.effective().await;
            (n, engine::table_of(&config))
        };
        match engine::lookup(&table, &r.key).map_err(change_status)? {
            Some(value) => Ok(Response::new(proto::GetReply { value, generation })),
            None => Err(Status::not_found(format!("{} is not set", r.key))),
        }
    }

    async fn set(
        &self,
        request: Request<proto::SetRequest>,
    ) -> Result<Response<proto::ChangeReply>, Status> {
        let r = request.into_inner();
        let pairs = r
            .assignments
            .into_iter()
            .map(|a| (a.key, a.value))
            .collect();
        self.change(Edit::Set(pairs), r.options).await
    }

    async fn unset(
        &self,
        request: Request<proto::UnsetRequest>,
    ) -> Result<Response<proto::ChangeReply>, Status> {
        let r = request.into_inner();
        self.change(Edit::Unset(r.keys), r.options).await
    }

    async fn apply(
        &self,
        request: Request<proto::ApplyRequest>,
    ) -> Result<Response<proto::ChangeReply>, Status> {
        let r = request.into_inner();
        let summary = if r.summary.is_empty() {
            "apply".to_string()
        } else {
            r.summary
        };
        let edit = Edit::Replace {
            text: r.toml,
            base: r.check_base.then_some(r.base),
            summary,
        };
        self.change(edit, r.options).await
    }

    async fn validate(
        &self,
        request: Request<proto::ValidateRequest>,
    ) -> Result<Response<proto::ChangeReply>, Status> {
        self.engine
            .validate(&request.into_inner().toml)
            .await
            .map(|o| Response::new(change_reply(o)))
            .map_err(change_status)
    }

    async fn export(
        &self,
        request: Request<proto::ExportRequest>,
    ) -> Result<Response<proto::ExportReply>, Status> {
        let (generation, toml) = if request.into_inner().local {
            self.engine.local().await
        } else {
            let (n, config) = self.engine.effective().await;
            let text = toml::to_string(&config)
                .map_err(|e| Status::internal(format!("effective config: {e}")))?;
            (n, text)
        };
        Ok(Response::new(proto::ExportReply { toml, generation }))
    }

    async fn history(
        &self,
        _request: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryReply>, Status> {
        let (gens, current) = self.engine.history().await;
        let generations = gens
            .into_iter()
            .map(|g| proto::Generation {
                number: g.number,
                state: g.meta.state.as_str().to_string(),
                created_unix_ms: g.meta.created_unix_ms,
                summary: g.meta.summary,
                current: g.number == current,
            })
            .collect();
        Ok(Response::new(proto::HistoryReply {
            generations,
            current,
        }))
    }

    async fn rollback(
        &self,
        request: Request<proto::RollbackRequest>,
    ) -> Result<Response<proto::ChangeReply>, Status> {
        let r = request.into_inner();
        self.change(Edit::Rollback(r.generation), r.options).await
    }

    async fn confirm(
        &self,
        _request: Request<proto::ConfirmRequest>,
    ) -> Result<Response<proto::ConfirmReply>, Status> {
        let engine = Arc::clone(&self.engine);
        tokio::spawn(async move { engine.confirm().await })
            .await
            .map_err(|e| Status::internal(format!("config confirm: {e}")))?
            .map(|generation| Response::new(proto::ConfirmReply { generation }))
            .map_err(change_status)
    }
}

/// `ros.v1.Services`.
struct ServicesApi {
    node: Arc<dyn Node>,
}

impl ServicesApi {
    async fn act(
        &self,
        request: Request<proto::ServiceRequest>,
        action: ServiceAction,
    ) -> Result<Response<proto::ServiceReply>, Status> {
        let name = request.into_inner().name;
        self.node
            .service(&name, action)
            .await
            .map(|message| Response::new(proto::ServiceReply { message }))
            .map_err(node_status)
    }
}

#[tonic::async_trait]
impl ServicesService for ServicesApi {
    async fn list(
        &self,
        _request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ContainerList>, Status> {
        let containers = self.node.services().await.map_err(node_status)?;
        Ok(Response::new(proto::ContainerList { containers }))
    }

    async fn start(
        &self,
        request: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::ServiceReply>, Status> {
        self.act(request, ServiceAction::Start).await
    }

    async fn stop(
        &self,
        request: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::ServiceReply>, Status> {
        self.act(request, ServiceAction::Stop).await
    }

    async fn restart(
        &self,
        request: Request<proto::ServiceRequest>,
    ) -> Result<Response<proto::ServiceReply>, Status> {
        self.act(request, ServiceAction::Restart).await
    }

    type LogsStream = LogLines;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument(
                "ros service logs: NAME is required",
            ));
        }
        logs(&self.node, r).await.map(Response::new)
    }
}

/// `ros.v1.System`.
struct SystemApi {
    engine: Arc<Engine>,
    node: Arc<dyn Node>,
}

#[tonic::async_trait]
impl SystemService for SystemApi {
    async fn version(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::VersionReply>, Status> {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(Response::new(proto::VersionReply {
            version: crate::cli::VERSION.to_string(),
            kernel,
        }))
    }

    async fn status(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let mut fields: Vec<proto::Field> = self
            .node
            .status()
            .await
            .into_iter()
            .map(|(name, value)| proto::Field { name, value })
            .collect();
        let (gens, current) = self.engine.history().await;
        let state = gens
            .iter()
            .find(|g| g.number == current)
            .map_or("none", |g| g.meta.state.as_str());
        fields.push(proto::Field {
            name: "config generation".into(),
            value: if current == 0 {
                "none (no local layer)".into()
            } else {
                format!("{current} ({state})")
            },
        });
        if let Some((generation, deadline)) = self.engine.trial().await {
            let left = deadline.saturating_sub(now_unix_ms()).div_ceil(1000);
            fields.push(proto::Field {
                name: "config trial".into(),
                value: format!("generation {generation} reverts in {left}s unless confirmed"),
            });
        }
        Ok(Response::new(proto::StatusReply { fields }))
    }

    async fn ps(
        &self,
        _request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ContainerList>, Status> {
        let containers = self.node.ps().await.map_err(node_status)?;
        Ok(Response::new(proto::ContainerList { containers }))
    }

    type LogsStream = LogLines;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        logs(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn reboot(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::Empty>, Status> {
        self.node
            .power(PowerAction::Reboot)
            .await
            .map(|()| Response::new(proto::Empty {}))
            .map_err(node_status)
    }

    async fn poweroff(
        &self,
        _request: Request<proto::Empty>,
    ) -> Result<Response<proto::Empty>, Status> {
        self.node
            .power(PowerAction::Poweroff)
            .await
            .map(|()| Response::new(proto::Empty {}))
            .map_err(node_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_peers_pass() {
        assert!(check_peer(Some(0)).is_ok());
        let e = check_peer(Some(65534)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(e.message(), "ros API: peer uid 65534 is not root");
        let e = check_peer(None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }

    #[tokio::test]
    async fn bind_makes_a_0600_socket_and_replaces_a_stale_one() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("run/ros.sock");
        std::fs::create_dir_all(d.path().join("run")).unwrap();
        // A stale socket from an earlier run: bound, then its listener gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let opts = ServeOptions {
            socket: path.clone(),
            mode: 0o600,
        };
        let l = bind(&opts).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(l.path(), path);
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        let names: Vec<_> = std::fs::read_dir(d.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ros.sock"]);
    }
}
