//! The two containerd instances of a ros node (DESIGN.md "containerd: two instances, two
//! namespaces"): their paths, their config file, their command line, and knowing when one
//! answers.
//!
//! Owns: [`Instance`] (system: socket `/run/ros/containerd-system.sock`, root
//! `/var/lib/ros/containerd-system`, state `/run/ros/containerd-system`, namespace `system`;
//! user: the standard `/run/containerd/containerd.sock`, `/var/lib/ros/containerd-user` (on the state disk),
//! `/run/containerd`, namespace `user`), [`render_config`] (containerd 1.7 config version 2),
//! [`argv`], [`prepare`] (directories and the config file) and [`wait_ready`].
//!
//! Must not: spawn containerd (PID 1 starts it through its reaper, never through tokio::process
//! or `Child::wait`), move it into a cgroup or set its OOM score by hand (the config's
//! `oom_score` does that; the cgroup is the supervisor's).
//!
//! The runc options in the config (`BinaryName`, `SystemdCgroup`) and its default snapshotter
//! sit in the CRI plugin's section, the only place containerd 1.7 reads them from; with CRI off
//! they are inert, so `containers` also passes the same runc options with every container (see
//! docs/runtime.md).

use super::client::Client;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which of the two instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceName {
    /// OS services, started by PID 1, namespace `system`.
    System,
    /// Workloads (and `ctr`/nerdctl/CRI), namespace `user`.
    User,
}

impl InstanceName {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceName::System => "system",
            InstanceName::User => "user",
        }
    }

    /// The containerd namespace ros uses on this instance.
    pub fn namespace(self) -> &'static str {
        match self {
            InstanceName::System => "system",
            InstanceName::User => "user",
        }
    }

    /// containerd's own OOM score adjustment (DESIGN.md: −999 system, −900 user).
    pub fn oom_score(self) -> i32 {
        match self {
            InstanceName::System => -999,
            InstanceName::User => -900,
        }
    }
}

/// Where one containerd instance keeps things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: InstanceName,
    /// Persistent data (content store, snapshots, metadata).
    pub root: PathBuf,
    /// Runtime state (shim sockets, bundles).
    pub state: PathBuf,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// The config file PID 1 writes and passes with `--config`.
    pub config_path: PathBuf,
}

/// The executable, as the system image lays it out.
pub const CONTAINERD: &str = "/usr/bin/containerd";

/// How long one readiness probe may take before it counts as a failed attempt.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("containerd at {socket} did not answer within {}s: {last}", waited.as_secs_f32())]
    NotReady {
        socket: PathBuf,
        waited: Duration,
        last: String,
    },
    #[error("containerd {instance}: {path}: {source}")]
    Io {
        instance: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl Instance {
    /// The system instance at its standard paths.
    pub fn system() -> Self {
        Instance {
            name: InstanceName::System,
            root: "/var/lib/ros/containerd-system".into(),
            state: "/run/ros/containerd-system".into(),
            socket: "/run/ros/containerd-system.sock".into(),
            config_path: "/run/ros/containerd-system.toml".into(),
        }
    }

    /// The user instance at its standard paths (where `ctr`, nerdctl and kubelet look).
    pub fn user() -> Self {
        Instance {
            name: InstanceName::User,
            root: "/var/lib/ros/containerd-user".into(),
            state: "/run/containerd".into(),
            socket: "/run/containerd/containerd.sock".into(),
            config_path: "/run/ros/containerd-user.toml".into(),
        }
    }

    /// The instance `name` at its standard paths.
    pub fn standard(name: InstanceName) -> Self {
        match name {
            InstanceName::System => Self::system(),
            InstanceName::User => Self::user(),
        }
    }

    /// The same instance with every path moved under `prefix` (tests, image builders).
    pub fn under(&self, prefix: &Path) -> Self {
        let re = |p: &Path| prefix.join(p.strip_prefix("/").unwrap_or(p));
        Instance {
            name: self.name,
            root: re(&self.root),
            state: re(&self.state),
            socket: re(&self.socket),
            config_path: re(&self.config_path),
        }
    }

    pub fn namespace(&self) -> &'static str {
        self.name.namespace()
    }
}

/// A TOML basic string (quotes and escapes).
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// The containerd 1.7 config (version 2) of `instance`.
pub fn render_config(instance: &Instance) -> String {
    let name = instance.name.as_str();
    let root = quote_path(&instance.root);
    let state = quote_path(&instance.state);
    let address = quote_path(&instance.socket);
    let opt = quote_path(&instance.root.join("opt"));
    let oom = instance.name.oom_score();
    format!(
        r#"# containerd ({name}) config, written by ros PID 1 at every boot: edits are lost.
version = 2
root = {root}
state = {state}
oom_score = {oom}
# CRI is off on both instances for now (kubelet support comes later, on the user instance).
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {address}
  uid = 0
  gid = 0

[plugins]
  # Keep containerd from creating /opt/containerd.
  [plugins."io.containerd.internal.v1.opt"]
    path = {opt}
  # Read by CRI only (inert while it is disabled); ros passes the same choices per container.
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "runc"
        SystemdCgroup = false
"#
    )
}

/// The command line that starts `instance`.
pub fn argv(instance: &Instance) -> Vec<String> {
    vec![
        CONTAINERD.to_owned(),
        "--config".to_owned(),
        instance.config_path.to_string_lossy().into_owned(),
    ]
}

/// Creates the instance's directories (root 0711, state and the socket's directory 0711) and
/// writes its config atomically. Idempotent.
pub fn prepare(instance: &Instance) -> Result<(), DaemonError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        let instance = instance.name.as_str();
        move |source| DaemonError::Io {
            instance,
            path,
            source,
        }
    };
    let mut dirs = vec![instance.root.clone(), instance.state.clone()];
    dirs.extend(instance.socket.parent().map(Path::to_path_buf));
    dirs.extend(instance.config_path.parent().map(Path::to_path_buf));
    for d in &dirs {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    for d in [&instance.root, &instance.state] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o711)).map_err(io_err(d))?;
    }
    let tmp = instance.config_path.with_extension("toml.tmp");
    fs::write(&tmp, render_config(instance)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &instance.config_path).map_err(io_err(&instance.config_path))?;
    Ok(())
}

/// Waits until the containerd on `socket` answers a Version request, retrying every 100 ms;
/// returns its version.
pub async fn wait_ready(socket: &Path, timeout: Duration) -> Result<String, DaemonError> {
    let start = Instant::now();
    loop {
        let attempt = async {
            let client = Client::connect(socket, "default").await?;
            client.version().await
        };
        let last = match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(Ok(version)) => return Ok(version),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
        };
        if start.elapsed() >= timeout {
            return Err(DaemonError::NotReady {
                socket: socket.to_owned(),
                waited: start.elapsed(),
                last,
            });
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM_GOLDEN: &str = include_str!("golden/containerd-system.toml");
    const USER_GOLDEN: &str = include_str!("golden/containerd-user.toml");

    #[test]
    fn test_system_config_matches_golden() {
        assert_eq!(render_config(&Instance::system()), SYSTEM_GOLDEN);
    }

    #[test]
    fn test_user_config_matches_golden() {
        assert_eq!(render_config(&Instance::user()), USER_GOLDEN);
    }

    #[test]
    fn test_config_parses_and_keeps_paths_apart() {
        let sys: toml::Value = toml::from_str(&render_config(&Instance::system())).unwrap();
        let user: toml::Value = toml::from_str(&render_config(&Instance::user())).unwrap();
        assert_eq!(sys["version"].as_integer(), Some(2));
        assert_eq!(
            sys["grpc"]["address"].as_str(),
            Some("/run/ros/containerd-system.sock")
        );
        assert_eq!(
            user["grpc"]["address"].as_str(),
            Some("/run/containerd/containerd.sock")
        );
        assert_ne!(sys["root"], user["root"]);
        assert_ne!(sys["state"], user["state"]);
        assert_eq!(sys["oom_score"].as_integer(), Some(-999));
        assert_eq!(user["oom_score"].as_integer(), Some(-900));
        let runc = &sys["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(false));
    }

    #[test]
    fn test_paths_with_quotes_are_escaped() {
        let i = Instance::system().under(Path::new("/tmp/we\"ird"));
        let v: toml::Value = toml::from_str(&render_config(&i)).unwrap();
        assert_eq!(
            v["root"].as_str(),
            Some("/tmp/we\"ird/var/lib/ros/containerd-system")
        );
    }

    #[test]
    fn test_argv_names_the_config() {
        assert_eq!(
            argv(&Instance::user()),
            [
                "/usr/bin/containerd",
                "--config",
                "/run/ros/containerd-user.toml"
            ]
        );
    }

    #[test]
    fn test_prepare_writes_config_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let i = Instance::system().under(dir.path());
        prepare(&i).unwrap();
        prepare(&i).unwrap();
        assert_eq!(
            fs::read_to_string(&i.config_path).unwrap(),
            render_config(&i)
        );
        assert!(i.root.is_dir() && i.state.is_dir());
        assert!(i.socket.parent().unwrap().is_dir());
    }

    #[tokio::test]
    async fn test_wait_ready_times_out_naming_the_socket() {
        let err = wait_ready(Path::new("/nonexistent/c.sock"), Duration::from_millis(300))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("containerd at /nonexistent/c.sock did not answer"),
            "{text}"
        );
    }
}
