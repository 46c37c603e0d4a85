//! Containers and their tasks in one namespace: create (spec + a writable overlayfs snapshot
//! of the image, keyed by the container id), start a task with its stdio FIFOs, kill, wait,
//! stop (signal, grace period, SIGKILL), delete, and list by kind with task state.
//!
//! Owns the containerd side of a container's life and the labels ros puts on containers
//! (`ros.kind=service|workload`). A container outlives its tasks: a restart is a new task on
//! the same container and snapshot ([`Client::start_task`] again), so the writable layer
//! survives restarts and is dropped only by [`Client::delete_container`].
//!
//! Must not: decide restart policy or ordering (the supervisor does), build specs (`spec`),
//! spawn processes (the shim does, inside containerd), or wait on children: exits come from the
//! Tasks.Wait RPC. Limitations: no exec, no pause, no TTY; stdin is always closed.

use super::client::{valid_identifier as valid_id, Client, Rpc, SNAPSHOTTER};
use super::import::ImageInfo;
use super::logs::TaskLogs;
use super::shared_shim;
use super::spec::SHIM_GROUP;
use crate::config::schema::Kind;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, ListTasksRequest,
    StartRequest, WaitRequest,
};
use containerd_client::tonic::{Code, Status};
use containerd_client::types::v1::Status as ProcStatus;
use nix::sys::signal::Signal;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The shim a container runs under unless it shares one.
pub const RUNTIME: &str = "io.containerd.runc.v2";

/// The runtime for `spec`: a container of a shim group (the [`SHIM_GROUP`] annotation) runs
/// under [`shared_shim::RUNTIME`], which joins its group's shim reliably; any other under runc's.
pub fn runtime_for(spec: &oci_spec::runtime::Spec) -> &'static str {
    let grouped = spec
        .annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(SHIM_GROUP));
    if grouped {
        shared_shim::RUNTIME
    } else {
        RUNTIME
    }
}
/// The `Any` type URL containerd expects for an OCI runtime spec (JSON in the value).
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The type URL of the runc shim's options.
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";
/// The label that tells services from workloads.
pub const LABEL_KIND: &str = "ros.kind";
/// How long a task may take to die after SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// The runc shim's options (`containerd.runc.v1.Options`), only the fields ros sets: the same
/// choices as the rendered config's CRI runtime section.
#[derive(Clone, PartialEq, Message)]
pub struct RuncOptions {
    #[prost(string, tag = "6")]
    pub binary_name: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
}

/// The runc options ros gives every container.
pub fn runc_options() -> prost_types::Any {
    prost_types::Any {
        type_url: RUNC_OPTIONS_TYPE_URL.to_owned(),
        value: RuncOptions {
            binary_name: "runc".into(),
            systemd_cgroup: false,
        }
        .encode_to_vec(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {id}: {op}: {source}")]
    Rpc {
        id: String,
        op: &'static str,
        source: Rpc,
    },
    #[error("container {id}: not a valid containerd identifier")]
    Id { id: String },
    #[error("container {id}: already exists")]
    Exists { id: String },
    #[error("container {id}: {op}: no such container, task or snapshot")]
    NotFound { id: String, op: &'static str },
    #[error("namespace {namespace}: {op}: {source}")]
    List {
        namespace: String,
        op: &'static str,
        source: Rpc,
    },
    #[error("container {id}: its task is still running")]
    Running { id: String },
    #[error("container {id}: no exit within {}s", timeout.as_secs_f32())]
    WaitTimeout { id: String, timeout: Duration },
    #[error("container {id}: spec: {reason}")]
    Spec { id: String, reason: String },
    #[error("container {id}: image {image} has no layers to make a rootfs from")]
    NoLayers { id: String, image: String },
}

/// What [`Client::create_container`] needs.
#[derive(Debug, Clone)]
pub struct NewContainer<'a> {
    /// The container id (ros uses the service or workload name).
    pub id: &'a str,
    pub kind: Kind,
    /// The image, as [`Client::image_info`] reports it (name and top chain ID).
    pub image: &'a ImageInfo,
    pub spec: &'a oci_spec::runtime::Spec,
    /// Extra labels (ros adds `ros.kind`).
    pub labels: BTreeMap<String, String>,
}

/// A task's state, as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
    Unknown,
}

impl TaskState {
    fn from_proto(v: i32) -> Self {
        match ProcStatus::try_from(v) {
            Ok(ProcStatus::Created) => TaskState::Created,
            Ok(ProcStatus::Running) => TaskState::Running,
            Ok(ProcStatus::Stopped) => TaskState::Stopped,
            Ok(ProcStatus::Paused) => TaskState::Paused,
            Ok(ProcStatus::Pausing) => TaskState::Pausing,
            Ok(ProcStatus::Unknown) | Err(_) => TaskState::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Running => "running",
            TaskState::Stopped => "stopped",
            TaskState::Paused => "paused",
            TaskState::Pausing => "pausing",
            TaskState::Unknown => "unknown",
        }
    }
}

/// A container's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    /// As containerd sees it (in containerd's PID namespace).
    pub pid: u32,
    pub state: TaskState,
    /// Set once stopped.
    pub exit_status: Option<u32>,
}

/// One container, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub image: String,
    /// From the `ros.kind` label; `None` for containers ros did not create.
    pub kind: Option<Kind>,
    pub labels: BTreeMap<String, String>,
    /// `None` when the container has no task.
    pub task: Option<TaskStatus>,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + signal for a task killed by a signal (as the shim reports it).
    pub status: u32,
    pub exited_at: Option<SystemTime>,
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "service",
        Kind::Workload => "workload",
    }
}

fn kind_from_label(v: &str) -> Option<Kind> {
    match v {
        "service" => Some(Kind::Service),
        "workload" => Some(Kind::Workload),
        _ => None,
    }
}

/// `SIGTERM`, `TERM`, `term` or `15` → the signal.
pub fn parse_signal(text: &str) -> Option<Signal> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = t.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).ok()
}

fn timestamp(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn now() -> prost_types::Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl Client {
    fn ctr_rpc(&self, id: &str, op: &'static str, s: Status) -> ContainerError {
        match s.code() {
            Code::NotFound => ContainerError::NotFound {
                id: id.to_owned(),
                op,
            },
            _ => ContainerError::Rpc {
                id: id.to_owned(),
                op,
                source: Box::new(s),
            },
        }
    }

    fn list_rpc(&self, op: &'static str, s: Status) -> ContainerError {
        ContainerError::List {
            namespace: self.namespace().to_owned(),
            op,
            source: Box::new(s),
        }
    }

    /// Creates the container record and its writable snapshot (key = container id) on top of
    /// the image's top layer. A leftover snapshot of that key (from a container deleted
    /// halfway) is replaced.
    pub async fn create_container(&self, c: &NewContainer<'_>) -> Result<(), ContainerError> {
        let id = c.id;
        if !valid_id(id) {
            return Err(ContainerError::Id { id: id.to_owned() });
        }
        if c.image.chain_id.is_empty() {
            return Err(ContainerError::NoLayers {
                id: id.to_owned(),
                image: c.image.name.clone(),
            });
        }
        let spec = serde_json::to_vec(c.spec).map_err(|e| ContainerError::Spec {
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
        let mut labels: HashMap<String, String> = c.labels.clone().into_iter().collect();
        labels.insert(LABEL_KIND.to_owned(), kind_label(c.kind).to_owned());
        let record = Container {
            id: id.to_owned(),
            labels,
            image: c.image.name.clone(),
            runtime: Some(Runtime {
                name: runtime_for(c.spec).to_owned(),
                options: Some(runc_options()),
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_owned(),
                value: spec,
            }),
            snapshotter: SNAPSHOTTER.to_owned(),
            snapshot_key: id.to_owned(),
            created_at: Some(now()),
            updated_at: Some(now()),
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        // The record first: from then on it references the snapshot, so GC keeps it.
        match self
            .containers()
            .create(CreateContainerRequest {
                container: Some(record),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                return Err(ContainerError::Exists { id: id.to_owned() })
            }
            Err(s) => return Err(self.ctr_rpc(id, "Containers.Create", s)),
        }
        let prepared = self.prepare_rootfs(id, &c.image.chain_id).await;
        if prepared.is_err() {
            let _ = self
                .containers()
                .delete(DeleteContainerRequest { id: id.to_owned() })
                .await;
        }
        prepared
    }

    async fn prepare_rootfs(&self, id: &str, parent: &str) -> Result<(), ContainerError> {
        for attempt in 0..2 {
            let res = self
                .snapshots()
                .prepare(PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.to_owned(),
                    parent: parent.to_owned(),
                    labels: HashMap::new(),
                })
                .await;
            match res {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == Code::AlreadyExists && attempt == 0 => {
                    self.remove_snapshot(id).await?;
                }
                Err(s) => return Err(self.ctr_rpc(id, "Snapshots.Prepare", s)),
            }
        }
        Err(ContainerError::Exists { id: id.to_owned() })
    }

    async fn remove_snapshot(&self, id: &str) -> Result<(), ContainerError> {
        match self
            .snapshots()
            .remove(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.to_owned(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.ctr_rpc(id, "Snapshots.Remove", s)),
        }
    }

    /// Creates and starts a new task of container `id`, its stdout and stderr going to `logs`'
    /// FIFOs (or nowhere). A stopped task left from an earlier run is deleted first. Returns the
    /// task's PID (in containerd's PID namespace).
    pub async fn start_task(
        &self,
        id: &str,
        logs: Option<&TaskLogs>,
    ) -> Result<u32, ContainerError> {
        let created = self.create_task(id, logs).await;
        if let Some(l) = logs {
            // The shim has opened the FIFOs (or never will): from now on EOF means the task
            // is gone.
            l.task_created();
        }
        created?;
        match self
            .tasks()
            .start(StartRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => {
                let _ = self
                    .tasks()
                    .delete(DeleteTaskRequest {
                        container_id: id.to_owned(),
                    })
                    .await;
                Err(self.ctr_rpc(id, "Tasks.Start", s))
            }
        }
    }

    async fn create_task(&self, id: &str, logs: Option<&TaskLogs>) -> Result<(), ContainerError> {
        let mounts = self
            .snapshots()
            .mounts(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.to_owned(),
            })
            .await
            .map_err(|s| self.ctr_rpc(id, "Snapshots.Mounts", s))?
            .into_inner()
            .mounts;
        let path = |p: Option<&std::path::Path>| {
            p.map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let req = CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs: mounts,
            stdin: String::new(),
            stdout: path(logs.map(TaskLogs::stdout)),
            stderr: path(logs.map(TaskLogs::stderr)),
            terminal: false,
            checkpoint: None,
            options: Some(runc_options()),
            runtime_path: String::new(),
        };
        for attempt in 0..2 {
            match self.tasks().create(req.clone()).await {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == Code::AlreadyExists && attempt == 0 => {
                    match self.task_status(id).await? {
                        Some(t) if t.state == TaskState::Stopped => {
                            self.delete_task(id).await?;
                        }
                        _ => return Err(ContainerError::Running { id: id.to_owned() }),
                    }
                }
                Err(s) => return Err(self.ctr_rpc(id, "Tasks.Create", s)),
            }
        }
        Err(ContainerError::Running { id: id.to_owned() })
    }

    /// Sends `signal` to the task's init process (`all`: to every process of the container).
    pub async fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), ContainerError> {
        self.tasks()
            .kill(KillRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal: signal as u32,
                all,
            })
            .await
            .map_err(|s| self.ctr_rpc(id, "Tasks.Kill", s))?;
        Ok(())
    }

    /// Waits for the task to exit (at once if it already has); `None` waits as long as it takes.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Exit, ContainerError> {
        let mut tasks = self.tasks();
        let call = tasks.wait(WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        });
        let res =
            match timeout {
                Some(t) => tokio::time::timeout(t, call).await.map_err(|_| {
                    ContainerError::WaitTimeout {
                        id: id.to_owned(),
                        timeout: t,
                    }
                })?,
                None => call.await,
            };
        let r = res
            .map_err(|s| self.ctr_rpc(id, "Tasks.Wait", s))?
            .into_inner();
        Ok(Exit {
            status: r.exit_status,
            exited_at: timestamp(r.exited_at),
        })
    }

    /// Stops the task: `signal` (the image's stop signal, SIGTERM by default), up to `timeout`
    /// for it to exit, then SIGKILL to every process and up to [`KILL_GRACE`] more. The task is
    /// left stopped, not deleted (its exit stays readable until [`Client::delete_task`]).
    pub async fn stop(
        &self,
        id: &str,
        signal: Signal,
        timeout: Duration,
    ) -> Result<Exit, ContainerError> {
        match self.kill(id, signal, false).await {
            // NotFound: the process has already exited; Wait reports how.
            Ok(()) | Err(ContainerError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        match self.wait(id, Some(timeout)).await {
            Err(ContainerError::WaitTimeout { .. }) => {}
            other => return other,
        }
        match self.kill(id, Signal::SIGKILL, true).await {
            Ok(()) | Err(ContainerError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.wait(id, Some(KILL_GRACE)).await
    }

    /// Deletes a stopped task; `None` when there was none. A running task is refused.
    pub async fn delete_task(&self, id: &str) -> Result<Option<Exit>, ContainerError> {
        match self
            .tasks()
            .delete(DeleteTaskRequest {
                container_id: id.to_owned(),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some(Exit {
                    status: r.exit_status,
                    exited_at: timestamp(r.exited_at),
                }))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) if s.code() == Code::FailedPrecondition => {
                Err(ContainerError::Running { id: id.to_owned() })
            }
            Err(s) => Err(self.ctr_rpc(id, "Tasks.Delete", s)),
        }
    }

    /// The container's task, if it has one.
    pub async fn task_status(&self, id: &str) -> Result<Option<TaskStatus>, ContainerError> {
        match self
            .tasks()
            .get(GetRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().process.map(|p| task_status(&p))),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.ctr_rpc(id, "Tasks.Get", s)),
        }
    }

    /// Removes the container whatever its state: SIGKILL to a live task, then the task, the
    /// container record and its snapshot. Missing pieces are fine (idempotent).
    pub async fn delete_container(&self, id: &str) -> Result<(), ContainerError> {
        if let Some(t) = self.task_status(id).await? {
            if t.state != TaskState::Stopped {
                match self.kill(id, Signal::SIGKILL, true).await {
                    Ok(()) | Err(ContainerError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                self.wait(id, Some(KILL_GRACE)).await?;
            }
            self.delete_task(id).await?;
        }
        match self
            .containers()
            .delete(DeleteContainerRequest { id: id.to_owned() })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(self.ctr_rpc(id, "Containers.Delete", s)),
        }
        self.remove_snapshot(id).await
    }

    /// The containers of this namespace (only those of `kind`, when given), with their tasks.
    pub async fn list_containers(
        &self,
        kind: Option<Kind>,
    ) -> Result<Vec<ContainerStatus>, ContainerError> {
        let filters = match kind {
            Some(k) => vec![format!("labels.\"{LABEL_KIND}\"=={}", kind_label(k))],
            None => Vec::new(),
        };
        let containers = self
            .containers()
            .list(ListContainersRequest { filters })
            .await
            .map_err(|s| self.list_rpc("Containers.List", s))?
            .into_inner()
            .containers;
        let tasks: HashMap<String, TaskStatus> = self
            .tasks()
            .list(ListTasksRequest {
                filter: String::new(),
            })
            .await
            .map_err(|s| self.list_rpc("Tasks.List", s))?
            .into_inner()
            .tasks
            .iter()
            // Tasks.List fills the task id (= the container id) and leaves container_id empty.
            .map(|p| {
                let id = if p.container_id.is_empty() {
                    &p.id
                } else {
                    &p.container_id
                };
                (id.clone(), task_status(p))
            })
            .collect();
        let mut out: Vec<ContainerStatus> = containers
            .into_iter()
            .map(|c| ContainerStatus {
                task: tasks.get(&c.id).cloned(),
                kind: c.labels.get(LABEL_KIND).and_then(|v| kind_from_label(v)),
                labels: c.labels.into_iter().collect(),
                image: c.image,
                id: c.id,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

fn task_status(p: &containerd_client::types::v1::Process) -> TaskStatus {
    let state = TaskState::from_proto(p.status);
    TaskStatus {
        pid: p.pid,
        state,
        exit_status: (state == TaskState::Stopped).then_some(p.exit_status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_runc_options_encode_binary_name_field_6() {
        let any = runc_options();
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        // field 6, wire type 2 (0x32), length 4, "runc"; systemd_cgroup=false is omitted.
        assert_eq!(any.value, b"\x32\x04runc");
    }

    #[test]
    fn test_signals_parse_in_every_spelling() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("kill"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGRTMIN+3"), None);
        assert_eq!(parse_signal("nope"), None);
    }

    #[test]
    fn test_grouped_containers_run_under_the_shared_shim_runtime() {
        let mut spec = oci_spec::runtime::Spec::default();
        assert_eq!(runtime_for(&spec), "io.containerd.runc.v2");
        spec.set_annotations(Some(HashMap::from([(
            SHIM_GROUP.to_owned(),
            "ros-workloads".to_owned(),
        )])));
        assert_eq!(runtime_for(&spec), "io.containerd.ros.v2");
        // containerd resolves io.containerd.<name>.<version> to containerd-shim-<name>-<version>.
        assert_eq!(shared_shim::BINARY, "containerd-shim-ros-v2");
    }

    #[test]
    fn test_kind_labels_round_trip() {
        for k in [Kind::Service, Kind::Workload] {
            assert_eq!(kind_from_label(kind_label(k)), Some(k));
        }
        assert_eq!(kind_from_label("other"), None);
    }

    #[test]
    fn test_task_state_maps_every_proto_value() {
        assert_eq!(TaskState::from_proto(2), TaskState::Running);
        assert_eq!(TaskState::from_proto(3), TaskState::Stopped);
        assert_eq!(TaskState::from_proto(99), TaskState::Unknown);
    }

    #[test]
    fn test_errors_name_the_container() {
        let e = ContainerError::Id { id: "a b".into() };
        assert_eq!(
            e.to_string(),
            "container a b: not a valid containerd identifier"
        );
    }
}
