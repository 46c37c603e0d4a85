//! `containerd-shim-ros-v2`, the runtime of containers with `shim = "shared"`: containerd's runc
//! v2 shim with a dependable `start` for containers of one shim group.
//!
//! containerd 1.7's runc v2 `start` joins a group's running shim only when a 100 ms dial of the
//! group's socket succeeds. On a starved CPU (TCG, a burst of starts) the dial times out; `start`
//! then removes the socket and starts a second shim on the same path, and once containerd
//! restarts, it finds the first shim's containers by that path, reaches the wrong shim and
//! deletes them. This `start` takes a lock per group, checks the socket with a plain connect (a
//! listening unix socket accepts at once; no timer to miss), and either answers with the running
//! shim's address — what runc's `start` answers when its dial succeeds — or runs runc's `start`
//! while it holds the lock, so the group's shim is created once.
//!
//! Owns that decision only. Every other call (`delete`, the shim daemon, a container without a
//! group) is the runc v2 shim itself, exec'd with the same arguments; nothing here serves tasks.
//! containerd finds this binary by the runtime name [`RUNTIME`] as `containerd-shim-ros-v2` on
//! its `PATH` (a link to ros in the initramfs).

use super::spec::SHIM_GROUP;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The runtime name ros gives containers of a shim group.
pub const RUNTIME: &str = "io.containerd.ros.v2";
/// The binary containerd resolves [`RUNTIME`] to; ros dispatches on it as argv[0].
pub const BINARY: &str = "containerd-shim-ros-v2";
/// containerd's runc v2 shim, found on containerd's `PATH`.
pub const RUNC_SHIM: &str = "containerd-shim-runc-v2";
/// The annotations the runc v2 shim groups by, in its order (containerd's `groupLabels`).
const GROUP_LABELS: [&str; 2] = [SHIM_GROUP, "io.kubernetes.cri.sandbox-id"];
/// Flags of the shim that take no value.
const BOOL_FLAGS: [&str; 2] = ["debug", "v"];

#[derive(Debug, thiserror::Error)]
pub enum SharedShimError {
    #[error("{BINARY}: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{BINARY}: {path}: not an OCI spec: {reason}")]
    Spec { path: PathBuf, reason: String },
    #[error("{BINARY}: start of container {id:?}: no -namespace or -address from containerd")]
    Args { id: String },
    #[error("{BINARY}: run {shim}: {source}")]
    Runc { shim: PathBuf, source: io::Error },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SharedShimError + 'a {
    move |source| SharedShimError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the shim's sockets and ros's group locks live, and which runc shim to run.
#[derive(Debug, Clone)]
pub struct Paths {
    /// containerd's shim socket directory (`socketRoot/s`, fixed in containerd 1.7).
    pub socket_dir: PathBuf,
    /// One lock file per group socket.
    pub lock_dir: PathBuf,
    pub runc_shim: PathBuf,
}

impl Paths {
    /// The paths on a running ros.
    pub fn host() -> Self {
        Paths {
            socket_dir: "/run/containerd/s".into(),
            lock_dir: "/run/ros/shim-groups".into(),
            runc_shim: RUNC_SHIM.into(),
        }
    }
}

/// The flags containerd passes a shim (`-namespace ns -address A -publish-binary B -id ID
/// [-debug] start`), parsed the way Go's `flag` package does: flags up to the first other
/// argument, which is the action.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShimArgs {
    pub namespace: Option<String>,
    pub address: Option<String>,
    pub id: Option<String>,
    pub bundle: Option<String>,
    pub action: Option<String>,
}

impl ShimArgs {
    pub fn parse(raw: &[OsString]) -> Self {
        let mut out = ShimArgs::default();
        let mut it = raw.iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(arg) = it.next() {
            if arg == "--" {
                out.action = it.next();
                break;
            }
            let flag = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
                Some(f) if !f.is_empty() => f.to_owned(),
                _ => {
                    out.action = Some(arg);
                    break;
                }
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (flag, None),
            };
            let value = if BOOL_FLAGS.contains(&name.as_str()) {
                inline
            } else {
                inline.or_else(|| it.next())
            };
            match name.as_str() {
                "namespace" => out.namespace = value,
                "address" => out.address = value,
                "id" => out.id = value,
                "bundle" => out.bundle = value,
                _ => {}
            }
        }
        out
    }
}

/// The group a bundle's `config.json` asks for, by the runc shim's labels in its order.
pub fn group_of(spec_json: &[u8], path: &Path) -> Result<Option<String>, SharedShimError> {
    let spec: serde_json::Value =
        serde_json::from_slice(spec_json).map_err(|e| SharedShimError::Spec {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let annotations = spec.get("annotations");
    Ok(GROUP_LABELS.iter().find_map(|label| {
        annotations
            .and_then(|a| a.get(label))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }))
}

/// Go's `filepath.Join` of absolute-or-relative parts: joined by `/`, then cleaned (empty and
/// `.` elements dropped, `..` folding into its parent, no trailing slash).
fn go_join(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let rooted = joined.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for el in joined.split('/') {
        match el {
            "" | "." => {}
            ".." if out.last().is_some_and(|l| *l != "..") => {
                out.pop();
            }
            ".." if rooted => {}
            el => out.push(el),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_owned(),
        (false, false) => body,
    }
}

/// The socket a group's shim serves on: containerd's `SocketAddress` (sha256 of
/// `filepath.Join(containerd address, namespace, group)` in the socket directory).
pub fn socket_path(socket_dir: &Path, address: &str, namespace: &str, group: &str) -> PathBuf {
    let digest = Sha256::digest(go_join(&[address, namespace, group]).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    socket_dir.join(hex)
}

/// Whether a shim listens on `socket`: a connect either completes (a listener's backlog takes
/// it at once) or fails because nothing is there.
fn listening(socket: &Path) -> Result<bool, SharedShimError> {
    match UnixStream::connect(socket) {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(io_err("connect", socket)(e)),
    }
}

/// What `start` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// Joined the group's running shim: its address, for containerd.
    Joined(String),
    /// Ran runc's `start` (the group's first container, or one without a group): its exit code.
    Ran(i32),
}

/// `start` in `bundle`: join the group's shim if it runs, else run runc's `start` under the
/// group's lock. `raw` is the argument list as containerd gave it.
pub fn start(
    bundle: &Path,
    args: &ShimArgs,
    raw: &[OsString],
    paths: &Paths,
) -> Result<Started, SharedShimError> {
    let config = bundle.join("config.json");
    let spec = std::fs::read(&config).map_err(io_err("read", &config))?;
    let Some(group) = group_of(&spec, &config)? else {
        return run_runc(paths, raw).map(Started::Ran);
    };
    let (Some(ns), Some(address)) = (&args.namespace, &args.address) else {
        return Err(SharedShimError::Args {
            id: args.id.clone().unwrap_or_default(),
        });
    };
    let socket = socket_path(&paths.socket_dir, address, ns, &group);
    let _lock = lock(paths, &socket)?;
    if listening(&socket)? {
        let address = format!("unix://{}", socket.display());
        write_address(bundle, &address)?;
        return Ok(Started::Joined(address));
    }
    run_runc(paths, raw).map(Started::Ran)
}

/// Holds the group's lock until dropped (the lock file is named after the socket).
fn lock(paths: &Paths, socket: &Path) -> Result<Flock<std::fs::File>, SharedShimError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.lock_dir)
        .map_err(io_err("create", &paths.lock_dir))?;
    let name = socket.file_name().unwrap_or(socket.as_os_str());
    let path = paths.lock_dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_err("lock", &path)(io::Error::from(errno)))
}

/// The bundle's `address` file, which containerd and a re-exec'd shim read; written whole.
fn write_address(bundle: &Path, address: &str) -> Result<(), SharedShimError> {
    let tmp = bundle.join(".address.ros");
    let path = bundle.join("address");
    std::fs::write(&tmp, address).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("rename to", &path))
}

/// runc's shim with containerd's arguments (stdin, stdout and stderr are containerd's pipes).
fn run_runc(paths: &Paths, raw: &[OsString]) -> Result<i32, SharedShimError> {
    let status = Command::new(&paths.runc_shim)
        .args(raw)
        .status()
        .map_err(|source| SharedShimError::Runc {
            shim: paths.runc_shim.clone(),
            source,
        })?;
    Ok(status.code().unwrap_or(1))
}

/// The binary's entry: `start` decided here, anything else is runc's shim.
pub fn main() -> i32 {
    let raw: Vec<OsString> = std::env::args_os().skip(1).collect();
    let args = ShimArgs::parse(&raw);
    let paths = Paths::host();
    if args.action.as_deref() != Some("start") {
        let err = Command::new(&paths.runc_shim).args(&raw).exec();
        eprintln!("{BINARY}: exec {}: {err}", paths.runc_shim.display());
        return 127;
    }
    let bundle = PathBuf::from(args.bundle.as_deref().unwrap_or("."));
    match start(&bundle, &args, &raw, &paths) {
        // containerd reads the address from stdout, with stderr mixed in: nothing else is printed.
        Ok(Started::Joined(address)) => {
            let mut out = io::stdout();
            match out.write_all(address.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
        Ok(Started::Ran(code)) => code,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_containerds_start_arguments() {
        let raw = os(&[
            "-namespace",
            "user",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "w01",
            "-debug",
            "start",
        ]);
        assert_eq!(
            ShimArgs::parse(&raw),
            ShimArgs {
                namespace: Some("user".into()),
                address: Some("/run/containerd/containerd.sock".into()),
                id: Some("w01".into()),
                bundle: None,
                action: Some("start".into()),
            }
        );
    }

    #[test]
    fn parses_go_flag_forms_and_stops_at_the_action() {
        let a = ShimArgs::parse(&os(&[
            "--namespace=system",
            "-v=false",
            "-bundle",
            "/b",
            "delete",
            "-id",
            "x",
        ]));
        assert_eq!(a.namespace.as_deref(), Some("system"));
        assert_eq!(a.bundle.as_deref(), Some("/b"));
        assert_eq!(a.action.as_deref(), Some("delete"));
        assert_eq!(a.id, None, "flags after the action are not flags");
        assert_eq!(ShimArgs::parse(&os(&["-id", "x"])).action, None);
    }

    #[test]
    fn group_is_the_first_label_present() {
        let p = Path::new("config.json");
        let both = br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod","io.containerd.runc.v2.group":"g"}}"#;
        assert_eq!(group_of(both, p).unwrap().as_deref(), Some("g"));
        let pod = br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod"}}"#;
        assert_eq!(group_of(pod, p).unwrap().as_deref(), Some("pod"));
        assert_eq!(group_of(br#"{"ociVersion":"1.0.2"}"#, p).unwrap(), None);
        let err = group_of(b"{", p).unwrap_err().to_string();
        assert!(err.contains("config.json: not an OCI spec"), "{err}");
    }

    #[test]
    fn joins_like_go_filepath_join() {
        assert_eq!(go_join(&["/run/c.sock", "user", "g"]), "/run/c.sock/user/g");
        assert_eq!(
            go_join(&["/run//c.sock/", "./user", "g/"]),
            "/run/c.sock/user/g"
        );
        assert_eq!(go_join(&["/a/b", "..", "c"]), "/a/c");
        assert_eq!(go_join(&["/", "..", "c"]), "/c");
        assert_eq!(go_join(&["a", "..", ".."]), "..");
        assert_eq!(go_join(&["", ""]), ".");
    }

    #[test]
    fn socket_path_is_containerds_address() {
        // printf '%s' /run/containerd/containerd.sock/user/ros-workloads | sha256sum
        assert_eq!(
            socket_path(
                Path::new("/run/containerd/s"),
                "/run/containerd/containerd.sock",
                "user",
                "ros-workloads"
            ),
            Path::new(
                "/run/containerd/s/b87ad8f4735c6d195c38af1266870f36c32967a17397db450bbbd35704586cfe"
            )
        );
    }

    /// A bundle, the paths, and a stand-in for runc's `start` that records its arguments.
    struct Fixture {
        dir: tempfile::TempDir,
        paths: Paths,
        args: Vec<OsString>,
    }

    impl Fixture {
        fn new(annotations: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let bundle = dir.path().join("bundle");
            std::fs::create_dir(&bundle).unwrap();
            std::fs::write(
                bundle.join("config.json"),
                format!(r#"{{"annotations":{annotations}}}"#),
            )
            .unwrap();
            let runc = dir.path().join("runc-shim");
            std::fs::write(
                &runc,
                format!(
                    "#!/bin/sh\necho \"$@\" > {}\nexit 7\n",
                    dir.path().join("ran").display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
            let paths = Paths {
                socket_dir: dir.path().join("s"),
                lock_dir: dir.path().join("locks"),
                runc_shim: runc,
            };
            std::fs::create_dir(&paths.socket_dir).unwrap();
            let args = os(&[
                "-namespace",
                "user",
                "-address",
                "/run/c.sock",
                "-id",
                "w02",
                "start",
            ]);
            Fixture { dir, paths, args }
        }
        fn bundle(&self) -> PathBuf {
            self.dir.path().join("bundle")
        }
        fn socket(&self) -> PathBuf {
            socket_path(&self.paths.socket_dir, "/run/c.sock", "user", "g")
        }
        fn start(&self) -> Result<Started, SharedShimError> {
            start(
                &self.bundle(),
                &ShimArgs::parse(&self.args),
                &self.args,
                &self.paths,
            )
        }
        fn ran(&self) -> Option<String> {
            std::fs::read_to_string(self.dir.path().join("ran")).ok()
        }
    }

    #[test]
    fn joins_a_listening_group_shim_and_writes_the_bundles_address() {
        let f = Fixture::new(r#"{"io.containerd.runc.v2.group":"g"}"#);
        let _shim = UnixListener::bind(f.socket()).unwrap();
        let want = format!("unix://{}", f.socket().display());
        assert_eq!(f.start().unwrap(), Started::Joined(want.clone()));
        assert_eq!(
            std::fs::read_to_string(f.bundle().join("address")).unwrap(),
            want
        );
        assert_eq!(f.ran(), None, "runc's start is not run");
    }

    #[test]
    fn runs_runcs_start_when_no_shim_listens_on_the_group_socket() {
        let f = Fixture::new(r#"{"io.containerd.runc.v2.group":"g"}"#);
        // A socket file left by a dead shim: nothing accepts on it.
        drop(UnixListener::bind(f.socket()).unwrap());
        assert_eq!(f.start().unwrap(), Started::Ran(7));
        assert_eq!(
            f.ran().as_deref(),
            Some("-namespace user -address /run/c.sock -id w02 start\n")
        );
        assert!(!f.bundle().join("address").exists());
        assert!(f
            .paths
            .lock_dir
            .join(f.socket().file_name().unwrap())
            .exists());
    }

    #[test]
    fn a_container_without_a_group_is_runcs_start() {
        let f = Fixture::new("{}");
        assert_eq!(f.start().unwrap(), Started::Ran(7));
        assert!(f.ran().is_some());
        assert!(!f.paths.lock_dir.exists(), "no group, no lock");
    }

    #[test]
    fn a_second_start_waits_for_the_first_to_create_the_shim() {
        let f = Fixture::new(r#"{"io.containerd.runc.v2.group":"g"}"#);
        let held = lock(&f.paths, &f.socket()).unwrap();
        let socket = f.socket();
        let creator = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let l = UnixListener::bind(socket).unwrap();
            drop(held);
            l
        });
        assert!(matches!(f.start().unwrap(), Started::Joined(_)));
        drop(creator.join().unwrap());
        assert_eq!(f.ran(), None);
    }

    #[test]
    fn errors_name_the_file_and_the_container() {
        let f = Fixture::new(r#"{"io.containerd.runc.v2.group":"g"}"#);
        std::fs::remove_file(f.bundle().join("config.json")).unwrap();
        let err = f.start().unwrap_err().to_string();
        assert!(
            err.starts_with("containerd-shim-ros-v2: read ") && err.contains("config.json"),
            "{err}"
        );
        let f = Fixture::new(r#"{"io.containerd.runc.v2.group":"g"}"#);
        let args = os(&["-id", "w09", "start"]);
        let err = start(&f.bundle(), &ShimArgs::parse(&args), &args, &f.paths)
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"container "w09""#), "{err}");
    }
}
