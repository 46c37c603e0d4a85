//! The admin API as a user drives it: the real server on a temporary socket, a fake node behind
//! it (effective config from the compiled-in defaults + the local layer; reconciles recorded),
//! and the REAL `ros` binary pointed at it with ROS_SOCKET.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ros::api::logs::{self, Source};
use ros::api::{proto, Engine, LogQuery, LogStream, Node, NodeError, ServeOptions, ServiceAction};
use ros::config::generations::Store;
use ros::config::{Config, ConfigError, Layer, Plan};
use ros::power::PowerAction;

/// A node that runs nothing: reconciles are recorded, logs come from files in `log_dir`.
struct FakeNode {
    log_dir: PathBuf,
    reconciled: Mutex<Vec<Vec<String>>>,
}

#[async_trait::async_trait]
impl Node for FakeNode {
    fn effective(&self, local: Option<&Layer>) -> Result<Config, ConfigError> {
        ros::config::effective(local.map(std::slice::from_ref).unwrap_or(&[]))
    }

    async fn reconcile(
        &self,
        _old: &Config,
        _new: &Config,
        plan: &Plan,
    ) -> Result<Vec<String>, NodeError> {
        self.reconciled.lock().unwrap().push(plan.lines());
        Ok(Vec::new())
    }

    async fn services(&self) -> Result<Vec<proto::Container>, NodeError> {
        Ok(vec![container("system", "syslog")])
    }

    async fn service(&self, name: &str, action: ServiceAction) -> Result<String, NodeError> {
        match name {
            "syslog" => Ok(format!("service syslog: {}ed", action.as_str())),
            _ => Err(NodeError::NotFound {
                kind: "service",
                name: name.to_string(),
            }),
        }
    }

    async fn ps(&self) -> Result<Vec<proto::Container>, NodeError> {
        Ok(vec![
            container("system", "syslog"),
            container("user", "web"),
        ])
    }

    async fn logs(&self, query: LogQuery) -> Result<LogStream, NodeError> {
        let mut sources = logs::sources_in(&self.log_dir);
        match &query.name {
            Some(name) => {
                sources.retain(|s| matches!(s, Source::File { name: n, .. } if n == name))
            }
            None => sources.insert(
                0,
                Source::Lines {
                    name: "boot".into(),
                    lines: vec!["ros: ready in 1.000s".into()],
                },
            ),
        }
        Ok(logs::stream(sources, query.tail, query.follow))
    }

    async fn status(&self) -> Vec<(String, String)> {
        vec![("hostname".into(), "ros".into())]
    }

    async fn power(&self, _action: PowerAction) -> Result<(), NodeError> {
        Ok(())
    }
}

fn container(namespace: &str, name: &str) -> proto::Container {
    proto::Container {
        namespace: namespace.into(),
        name: name.into(),
        state: "running".into(),
        restarts: 0,
        uptime_s: 61,
        address: "10.88.0.2".into(),
        image: format!("{name}:1"),
        pid: 42,
    }
}

/// A server on its own runtime and temporary directory.
struct Server {
    dir: tempfile::TempDir,
    socket: PathBuf,
    node: Arc<FakeNode>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        Server::start_with_mode(0o600)
    }

    fn start_with_mode(mode: u32) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        let socket = dir.path().join("run/ros.sock");
        let node = Arc::new(FakeNode {
            log_dir: dir.path().join("log"),
            reconciled: Mutex::new(Vec::new()),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = Store::open(&dir.path().join("config")).unwrap();
        let dyn_node: Arc<dyn Node> = node.clone();
        let _guard = rt.enter();
        let engine = Engine::new(store, dyn_node, ros::config::effective(&[]).unwrap()).unwrap();
        let listener = ros::api::bind(&ServeOptions {
            socket: socket.clone(),
            mode,
        })
        .unwrap();
        rt.spawn(async move {
            if let Err(e) = ros::api::serve(engine, listener, std::future::pending()).await {
                eprintln!("{e}");
            }
        });
        Server {
            dir,
            socket,
            node,
            _rt: rt,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ros"));
        c.args(args).env("ROS_SOCKET", &self.socket);
        c
    }

    fn ros(&self, args: &[&str]) -> Out {
        Out(self.cmd(args).output().unwrap())
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.ros(args);
        assert!(o.0.status.success(), "ros {args:?}: {}", o.err());
        o.out()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    fn history(&self) -> serde_json::Value {
        self.json(&["config", "history"])
    }
}

struct Out(Output);

impl Out {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    fn err(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    fn code(&self) -> Option<i32> {
        self.0.status.code()
    }
}

#[test]
fn set_get_unset_history_and_rollback() {
    let s = Server::start();
    let out = s.ok(&["config", "set", "hostname", "node-2"]);
    assert_eq!(
        out,
        "~ hostname: ros -> node-2\ngeneration 1 is current (was 0)\n"
    );
    assert_eq!(s.ok(&["config", "get", "hostname"]), "node-2\n");
    let out = s.ok(&[
        "config",
        "set",
        "sysctl.vm.swappiness=10",
        "kernel.modules=[\"br_netfilter\"]",
    ]);
    assert!(
        out.contains("+ sysctl vm.swappiness = 10\n+ module br_netfilter\n"),
        "{out}"
    );
    assert_eq!(s.ok(&["config", "get", "sysctl.vm.swappiness"]), "10\n");
    s.ok(&["config", "unset", "sysctl.vm.swappiness"]);
    let o = s.ros(&["config", "get", "sysctl.vm.swappiness"]);
    assert_eq!(o.code(), Some(1));
    assert_eq!(o.err(), "ros: sysctl.vm.swappiness is not set\n");
    assert_eq!(
        s.ok(&["config", "get", "--local"]),
        "version = 1\nhostname = \"node-2\"\n\n[sysctl]\n\n[kernel]\nmodules = [\"br_netfilter\"]\n"
    );

    let table = s.ok(&["config", "history"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("GEN  STATE  CREATED"), "{table}");
    assert!(lines[3].starts_with("3*   good"), "{table}");
    assert!(lines[3].ends_with("unset sysctl.vm.swappiness"), "{table}");

    // Back to generation 2, as generation 4.
    let out = s.ok(&["config", "rollback"]);
    assert_eq!(
        out,
        "+ sysctl vm.swappiness = 10\ngeneration 4 is current (was 3)\n"
    );
    assert_eq!(s.ok(&["config", "get", "sysctl.vm.swappiness"]), "10\n");
    let out = s.ok(&["config", "rollback", "1"]);
    assert!(out.contains("generation 5 is current (was 4)"), "{out}");
    assert_eq!(s.ok(&["config", "get", "kernel.modules"]), "[]\n");
    let h = s.history();
    assert_eq!(h["current"], 5);
    assert_eq!(h["generations"][4]["summary"], "rollback to generation 1");

    // The effective config exports as TOML that validates as a local layer.
    let exported = s.ok(&["config", "export"]);
    assert!(exported.contains("hostname = \"node-2\""), "{exported}");
    let f = s.dir.path().join("exported.toml");
    std::fs::write(&f, &exported).unwrap();
    let out = s.ok(&["config", "validate", f.to_str().unwrap()]);
    assert!(
        out.starts_with(&format!("{}: valid\n", f.display())),
        "{out}"
    );
    assert_eq!(
        s.ok(&["config", "export", "--local"]),
        "version = 1\nhostname = \"node-2\"\n"
    );
    // Each change was reconciled once, with its plan.
    let rec = s.node.reconciled.lock().unwrap();
    assert_eq!(rec.len(), 5);
    assert_eq!(rec[0], ["~ hostname: ros -> node-2"]);
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let s = Server::start();
    let before = s.history();
    let out = s.ok(&["config", "set", "workloads.web.image=nginx", "--dry-run"]);
    assert_eq!(
        out,
        "+ workload web\n(dry run: nothing written; generation 0 is current)\n"
    );
    assert_eq!(s.history(), before);
    assert!(s.node.reconciled.lock().unwrap().is_empty());
    let o = s.ros(&["config", "get", "workloads.web.image"]);
    assert_eq!(o.code(), Some(1));
}

#[test]
fn an_invalid_set_is_refused_naming_the_key_and_history_is_unchanged() {
    let s = Server::start();
    s.ok(&["config", "set", "hostname=a"]);
    let before = s.history();
    for (args, key) in [
        (
            vec!["config", "set", "network.interfaces.eth1.mtu", "big"],
            "network.interfaces.eth1.mtu",
        ),
        (vec!["config", "set", "hostnme", "x"], "hostnme"),
        (vec!["config", "set", "hostname", "bad_name!"], "hostname"),
        (
            vec!["config", "set", "workloads.w.depends_on=[\"db\"]"],
            "workloads.w",
        ),
    ] {
        let o = s.ros(&args);
        assert_eq!(o.code(), Some(1), "{args:?}");
        assert!(
            o.err().starts_with(&format!("ros: {key}")),
            "{args:?}: {}",
            o.err()
        );
        assert!(o.out().is_empty());
    }
    assert_eq!(s.history(), before);
    assert_eq!(s.ok(&["config", "get", "hostname"]), "a\n");
    // Bad usage is exit 2.
    assert_eq!(s.ros(&["config", "set", "hostname"]).code(), Some(2));
}

#[test]
fn twenty_concurrent_set_processes_all_land() {
    let s = Server::start();
    let children: Vec<_> = (0..20)
        .map(|i| {
            s.cmd(&["config", "set", &format!("sysctl.net.ros.k{i}={i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for i in 0..20 {
        assert_eq!(
            s.ok(&["config", "get", &format!("sysctl.net.ros.k{i}")]),
            format!("{i}\n")
        );
    }
    let h = s.history();
    assert_eq!(h["current"], 20);
    assert_eq!(h["generations"].as_array().map(Vec::len), Some(20));
}

#[test]
fn a_try_reverts_by_itself_and_a_confirmed_one_stays() {
    let s = Server::start();
    s.ok(&["config", "set", "hostname=before"]);
    let out = s.ok(&["config", "set", "hostname=tried", "--try", "2s"]);
    assert!(
        out.contains("generation 2 is current (was 1)\non trial: reverts at"),
        "{out}"
    );
    assert_eq!(s.ok(&["config", "get", "hostname"]), "tried\n");
    let o = s.ros(&["config", "set", "sysctl.vm.swappiness=1"]);
    assert_eq!(o.code(), Some(1));
    assert!(
        o.err().starts_with("ros: generation 2 is on trial"),
        "{}",
        o.err()
    );
    let status = s.ok(&["os", "status"]);
    assert!(status.contains("config trial"), "{status}");

    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(s.ok(&["config", "get", "hostname"]), "before\n");
    let h = s.history();
    assert_eq!(h["current"], 3);
    assert_eq!(h["generations"][1]["state"], "bad");
    assert_eq!(h["generations"][2]["state"], "good");
    let o = s.ros(&["config", "confirm"]);
    assert_eq!(o.code(), Some(1));
    assert_eq!(
        o.err(),
        "ros: nothing to confirm: no --try change is pending\n"
    );

    s.ok(&["config", "set", "hostname=kept", "--try", "2s"]);
    assert_eq!(s.ok(&["config", "confirm"]), "generation 4 confirmed\n");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s.ok(&["config", "get", "hostname"]), "kept\n");
    let h = s.history();
    assert_eq!(h["current"], 4);
    assert_eq!(h["generations"][3]["state"], "good");
}

#[test]
fn apply_checks_its_base_and_edit_goes_through_the_editor() {
    let s = Server::start();
    s.ok(&["config", "set", "hostname=node-2"]);
    s.ok(&["config", "set", "sysctl.vm.swappiness=5"]);
    let f = s.dir.path().join("new.toml");
    std::fs::write(&f, "version = 1\nhostname = \"applied\"\n").unwrap();
    let o = s.ros(&["config", "apply", f.to_str().unwrap(), "--base", "1"]);
    assert_eq!(o.code(), Some(1));
    assert!(
        o.err().contains(
            "stale: the change was made on generation 1, but generation 2 is current now"
        ),
        "{}",
        o.err()
    );
    let out = s.ok(&["config", "apply", f.to_str().unwrap(), "--base", "2"]);
    assert!(
        out.contains("~ hostname: node-2 -> applied\n- sysctl vm.swappiness\n"),
        "{out}"
    );

    let o = s
        .cmd(&["config", "edit"])
        .env("VISUAL", "sed -i s/applied/edited/")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.ok(&["config", "get", "hostname"]), "edited\n");
    assert_eq!(s.history()["generations"][3]["summary"], "edit");
    // An edit the node refuses is kept and named.
    let o = s
        .cmd(&["config", "edit"])
        .env("VISUAL", "sed -i s/edited/bad_name!/")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.starts_with("ros: hostname (line 2): invalid hostname"),
        "{err}"
    );
    let kept = err
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(std::fs::read_to_string(&kept)
        .unwrap()
        .contains("bad_name!"));
    std::fs::remove_file(kept).unwrap();
}

#[test]
fn json_output_parses_for_every_kind_of_reply() {
    let s = Server::start();
    let r = s.json(&["config", "set", "hostname=j"]);
    assert_eq!(r["generation"], 1);
    assert_eq!(r["plan"][0], "~ hostname: ros -> j");
    let r = s.json(&["config", "get", "hostname"]);
    assert_eq!(r["value"], "j");
    let r = s.json(&["ps"]);
    assert_eq!(r[1]["namespace"], "user");
    assert_eq!(r[1]["name"], "web");
    let r = s.json(&["service", "list"]);
    assert_eq!(r[0]["name"], "syslog");
    let r = s.json(&["os", "status"]);
    assert_eq!(r["config generation"], "1 (good)");
    let r = s.json(&["os", "version"]);
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    let r = s.json(&["config", "export", "--local"]);
    assert_eq!(r["toml"], "version = 1\nhostname = \"j\"\n");
}

#[test]
fn node_commands_print_tables() {
    let s = Server::start();
    let ps = s.ok(&["ps"]);
    assert_eq!(
        ps,
        "NAMESPACE  NAME    STATE    RESTARTS  UPTIME  ADDRESS    IMAGE\n\
         system     syslog  running  0         1m1s    10.88.0.2  syslog:1\n\
         user       web     running  0         1m1s    10.88.0.2  web:1\n"
    );
    assert!(s.ok(&["service", "list"]).starts_with("NAME    STATE"));
    assert_eq!(
        s.ok(&["service", "restart", "syslog"]),
        "service syslog: restarted\n"
    );
    let o = s.ros(&["service", "stop", "nope"]);
    assert_eq!(o.code(), Some(1));
    assert_eq!(o.err(), "ros: service \"nope\": no such service\n");
    assert_eq!(s.ok(&["reboot"]), "rebooting\n");
}

#[test]
fn logs_follow_streams_a_line_written_after_the_command_started() {
    let s = Server::start();
    let log = s.dir.path().join("log/web.log");
    std::fs::write(&log, "old line\n").unwrap();
    assert_eq!(
        s.ok(&["logs"]),
        "boot | ros: ready in 1.000s\nweb | old line\n"
    );
    assert_eq!(
        s.ok(&["service", "logs", "web", "--tail", "1"]),
        "old line\n"
    );
    let mut child = s
        .cmd(&["logs", "-f", "--tail", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The stream is open once the server has the request; keep writing until a line shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = None;
    let mut n = 0;
    while got.is_none() && Instant::now() < deadline {
        n += 1;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "printed after start {n}").unwrap();
        got = rx.recv_timeout(Duration::from_millis(500)).ok();
    }
    let _ = child.kill();
    let _ = child.wait();
    let got = got.expect("ros logs -f printed nothing");
    assert!(got.starts_with("web | printed after start "), "{got}");
    assert!(!got.contains("old line"));
}

#[test]
fn an_absent_daemon_is_named_with_its_path() {
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("ros.sock");
    let o = Command::new(env!("CARGO_BIN_EXE_ros"))
        .args(["config", "get", "hostname"])
        .env("ROS_SOCKET", &sock)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "ros: the ros daemon is not reachable at {}: No such file or directory (os error 2)\n",
            sock.display()
        )
    );
}

/// Runs the ros binary as uid/gid 65534 (nobody), without supplementary groups (std drops them
/// when root sets a uid).
fn as_nobody(s: &Server, bin: &Path, args: &[&str]) -> Out {
    use std::os::unix::process::CommandExt;
    Out(Command::new(bin)
        .args(args)
        .uid(65534)
        .gid(65534)
        .env("ROS_SOCKET", &s.socket)
        .output()
        .unwrap())
}

/// A copy of the ros binary that uid 65534 can reach (the build tree may not be).
fn binary_for_nobody(s: &Server) -> PathBuf {
    let bin = s.dir.path().join("ros");
    std::fs::copy(env!("CARGO_BIN_EXE_ros"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in [s.dir.path().to_path_buf(), s.dir.path().join("run")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root to run a client as uid 65534");
    }
    root
}

#[test]
fn the_socket_is_0600_and_a_non_root_peer_cannot_reach_it() {
    let s = Server::start();
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    if !root() {
        return;
    }
    let bin = binary_for_nobody(&s);
    let o = as_nobody(&s, &bin, &["config", "set", "hostname=evil"]);
    assert_eq!(o.code(), Some(1));
    assert_eq!(
        o.err(),
        format!(
            "ros: the ros daemon is not reachable at {}: Permission denied (os error 13) (the API is for root only)\n",
            s.socket.display()
        )
    );
    assert_eq!(s.history()["current"], 0);
}

#[test]
fn with_the_mode_relaxed_the_peer_check_still_refuses_a_non_root_peer() {
    let s = Server::start_with_mode(0o666);
    if !root() {
        return;
    }
    let bin = binary_for_nobody(&s);
    for args in [
        vec!["config", "set", "hostname=evil"],
        vec!["config", "get", "hostname"],
        vec!["ps"],
        vec!["logs"],
        vec!["poweroff"],
    ] {
        let o = as_nobody(&s, &bin, &args);
        assert_eq!(o.code(), Some(1), "{args:?}");
        assert_eq!(
            o.err(),
            "ros: ros API: peer uid 65534 is not root\n",
            "{args:?}"
        );
    }
    assert_eq!(s.history()["current"], 0);
    // Root still gets through.
    s.ok(&["config", "set", "hostname=fine"]);
}
