//! ros's containerd client (`ros::runtime`) against the image's own containerd (trixie's 1.7,
//! with runc and their libraries from the pinned packages), started privately on the build host
//! by `xtask::hostctr`: import the system images, run containers with captured logs, stop,
//! restart, exit codes, cleanup.
//!
//! Needs root (mount namespaces, chroot) and, the first time, network access to
//! deb.debian.org for the pinned packages (later runs take them from the cache). The OCI
//! archives are built here through the xtask library (scripts/test runs this before
//! `cargo xtask build`), with a shell script standing in for the static `ros` binary. Skipped,
//! loudly, when not root.

use nix::sys::signal::Signal;
use ros::config::schema::{Container, Kind, NetMode};
use ros::runtime::containers::{ContainerError, NewContainer, TaskState};
use ros::runtime::daemon::{self, Instance};
use ros::runtime::import::ImageInfo;
use ros::runtime::logs::{LogSink, Rotation};
use ros::runtime::pool::Pool;
use ros::runtime::spec::{self, SpecInput};
use ros::runtime::Client;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::hostctr::{self, HostContainerd};
use xtask::layout::Layout;

mod common;

use common::{is_root, packages, VERSION};

const NS: &str = "system";

/// A private containerd and the console and syslog archives (built into its scratch
/// directory), as (name → path).
struct Fixture {
    ctr: HostContainerd,
    archives: BTreeMap<String, PathBuf>,
}

fn fixture() -> Fixture {
    let (ctr, archives) = common::containerd_with_archives(&["console", "syslog"]);
    Fixture { ctr, archives }
}

fn console_ref() -> String {
    format!("docker.io/ros/console:{VERSION}")
}

async fn connect(ctr: &HostContainerd) -> Client {
    let version = daemon::wait_ready(&ctr.address(), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        version.starts_with("1.7."),
        "the image's containerd: {version}"
    );
    Client::connect(&ctr.address(), NS).await.unwrap()
}

/// `ctr snapshots ls` keys (first column), header dropped.
fn snapshot_keys(ctr: &HostContainerd) -> Vec<String> {
    ctr.ctr_ok(NS, &["snapshots", "ls"])
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.ends_with(needle)).count()
}

/// Creates container `id` from `image` running `script` under `/bin/busybox sh -c`.
async fn create(
    client: &Client,
    image: &ImageInfo,
    id: &str,
    kind: Kind,
    script: &str,
    stop_timeout_s: u64,
) {
    let container = Container {
        image: image.name.clone(),
        entrypoint: Some(vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ]),
        net: Some(NetMode::None),
        stop_timeout_s,
        ..Default::default()
    };
    let spec = spec::build(&SpecInput {
        name: id,
        kind,
        container: &container,
        image: &image.config,
        // hostctr removes the empty /<namespace> cgroups runc leaves behind.
        cgroups_path: format!("/{NS}/{id}"),
        bridge: None,
    })
    .unwrap();
    client
        .create_container(&NewContainer {
            id,
            kind,
            image,
            spec: &spec,
            labels: BTreeMap::from([("ros.test".into(), "yes".into())]),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn test_import_twice_then_remove_leaves_nothing() {
    if !is_root() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture();
    let client = connect(&fx.ctr).await;
    for (name, path) in &fx.archives {
        let first = client.import_archive(path, None).await.unwrap();
        assert_eq!(first.name, format!("docker.io/ros/{name}:{VERSION}"));
        assert!(!first.already_present);
        assert_eq!(first.blobs_written, 3, "layer, config, manifest");
        assert_eq!(first.layers_unpacked, 1);
        let again = client.import_archive(path, None).await.unwrap();
        assert!(again.already_present, "{again:?}");
        assert_eq!((again.blobs_written, again.layers_unpacked), (0, 0));
        assert_eq!(again.digest, first.digest);
    }
    let names = fx.ctr.ctr_ok(NS, &["images", "ls", "-q"]).unwrap();
    assert_eq!(names.lines().count(), 2, "{names}");
    // ctr agrees the images are complete and unpacked.
    let check = fx.ctr.ctr_ok(NS, &["images", "check"]).unwrap();
    assert_eq!(check.matches("complete").count(), 2, "{check}");
    let info = client.image_info(&console_ref()).await.unwrap();
    assert_eq!(info.stop_signal.as_deref(), Some("SIGKILL"));
    assert_eq!(info.config.entrypoint, ["/usr/lib/ros/console"]);
    assert!(snapshot_keys(&fx.ctr).contains(&info.chain_id));
    let cfg = fx.ctr.ctr_ok(NS, &["content", "ls"]).unwrap();
    assert!(
        cfg.contains(&format!(
            "containerd.io/gc.ref.snapshot.overlayfs={}",
            info.chain_id
        )),
        "{cfg}"
    );

    // An explicit name makes a second record of the same content.
    let renamed = client
        .import_archive(&fx.archives["console"], Some("ros/console:pinned"))
        .await
        .unwrap();
    assert_eq!(renamed.name, "ros/console:pinned");
    assert_eq!(
        (renamed.blobs_written, renamed.layers_unpacked),
        (0, 0),
        "all there"
    );
    assert!(!renamed.already_present);

    // Removing every image lets GC take content and snapshots.
    for name in ["ros/console:pinned".to_owned(), console_ref()] {
        client.remove_image(&name, false).await.unwrap();
    }
    client
        .remove_image(&format!("docker.io/ros/syslog:{VERSION}"), true)
        .await
        .unwrap();
    assert!(snapshot_keys(&fx.ctr).is_empty());
    assert_eq!(
        fx.ctr.ctr_ok(NS, &["content", "ls", "-q"]).unwrap().trim(),
        ""
    );
    let err = client.image_info(&console_ref()).await.unwrap_err();
    assert!(
        err.to_string().contains("not found in namespace system"),
        "{err}"
    );
    fx.ctr.stop().unwrap();
    eprintln!("import test: {:.1}s", t0.elapsed().as_secs_f32());
}

#[tokio::test]
async fn test_service_logs_stop_restart_and_cleanup() {
    if !is_root() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture();
    let client = connect(&fx.ctr).await;
    client
        .import_archive(&fx.archives["console"], None)
        .await
        .unwrap();
    let image = client.image_info(&console_ref()).await.unwrap();
    let script = "echo hello-out; echo hello-err >&2; sleep 1000";
    create(&client, &image, "hello", Kind::Service, script, 2).await;
    let err = client
        .create_container(&NewContainer {
            id: "hello",
            kind: Kind::Service,
            image: &image,
            spec: &oci_spec::runtime::Spec::default(),
            labels: BTreeMap::new(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ContainerError::Exists { .. }), "{err}");

    let log_dir = fx.ctr.dir().join("log");
    let state = fx.ctr.dir().join("io");
    let sink = LogSink::new(&log_dir, "hello", Rotation::default()).unwrap();
    let log = sink.path();
    let read = || fs::read_to_string(&log).unwrap_or_default();

    // First run: both streams reach the log.
    let logs = sink.attach(&state).unwrap();
    let pid = client.start_task("hello", Some(&logs)).await.unwrap();
    assert!(pid > 0);
    eventually(Duration::from_secs(10), || {
        let t = read();
        (count(&t, " stdout hello-out") == 1 && count(&t, " stderr hello-err") == 1).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("log:\n{}\ncontainerd:\n{}", read(), fx.ctr.log_tail()));

    // It runs as a service, with the pid containerd reports.
    let listed = client.list_containers(Some(Kind::Service)).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let task = listed[0].task.clone().unwrap();
    assert_eq!((task.state, task.pid), (TaskState::Running, pid));
    assert_eq!(
        listed[0].labels.get("ros.test").map(String::as_str),
        Some("yes")
    );
    let host = fx.ctr.host_pid(pid as i32).expect("host pid of the task");
    let cmdline = fs::read_to_string(format!("/proc/{host}/cmdline")).unwrap();
    // busybox `sh -c` execs its last command: the task's init is `sleep 1000` itself.
    assert_eq!(cmdline, "sleep\x001000\x00");
    assert!(client
        .list_containers(Some(Kind::Workload))
        .await
        .unwrap()
        .is_empty());

    // The container's init (sleep, exec'd by sh) has no SIGTERM handler, and init of a PID
    // namespace ignores such signals: stop escalates to SIGKILL after the timeout.
    let t = Instant::now();
    let exit = client
        .stop("hello", Signal::SIGTERM, Duration::from_secs(2))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(exit.status, 137, "killed by SIGKILL");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(7),
        "{took:?}"
    );
    assert_eq!(
        client.delete_task("hello").await.unwrap().map(|e| e.status),
        Some(137)
    );
    tokio::time::timeout(Duration::from_secs(10), logs.finished())
        .await
        .expect("the copiers end once the task is gone")
        .unwrap();

    // Restart: a new task on the same container; the log keeps growing.
    let logs = sink.attach(&state).unwrap();
    client.start_task("hello", Some(&logs)).await.unwrap();
    eventually(Duration::from_secs(10), || {
        let t = read();
        (count(&t, " stdout hello-out") == 2 && count(&t, " stderr hello-err") == 2).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("log after restart:\n{}", read()));
    let first_line = read().lines().next().unwrap_or_default().to_owned();
    assert!(
        first_line.len() > 25 && first_line.as_bytes()[10] == b'T' && first_line.contains("Z "),
        "RFC 3339 prefix: {first_line}"
    );

    // Deleting a container with a live task kills it; nothing of it is left.
    client.delete_container("hello").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), logs.finished())
        .await
        .expect("the copiers end")
        .unwrap();
    assert!(client.list_containers(None).await.unwrap().is_empty());
    assert_eq!(
        snapshot_keys(&fx.ctr),
        std::slice::from_ref(&image.chain_id)
    );
    assert!(
        fs::read_dir(&state).unwrap().next().is_none(),
        "FIFOs removed"
    );
    fx.ctr.stop().unwrap();
    eprintln!("service test: {:.1}s", t0.elapsed().as_secs_f32());
}

#[tokio::test]
async fn test_exit_codes_and_graceful_stop() {
    if !is_root() {
        return;
    }
    let t0 = Instant::now();
    let fx = fixture();
    let client = connect(&fx.ctr).await;
    client
        .import_archive(&fx.archives["console"], None)
        .await
        .unwrap();
    let image = client.image_info(&console_ref()).await.unwrap();

    create(&client, &image, "three", Kind::Workload, "exit 3", 10).await;
    client.start_task("three", None).await.unwrap();
    let exit = client
        .wait("three", Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(exit.status, 3);
    assert!(exit.exited_at.is_some());
    let listed = client.list_containers(Some(Kind::Workload)).await.unwrap();
    let task = listed[0].task.clone().unwrap();
    assert_eq!(
        (task.state, task.exit_status),
        (TaskState::Stopped, Some(3))
    );
    // Stopping a task that has already exited reports its exit (Kill answers NotFound).
    let kill = client.kill("three", Signal::SIGTERM, false).await;
    assert!(
        matches!(kill, Err(ContainerError::NotFound { .. })),
        "{kill:?}"
    );
    let again = client
        .stop("three", Signal::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again.status, 3);
    // A stopped task left behind does not block the next start.
    client.start_task("three", None).await.unwrap();
    assert_eq!(client.wait("three", None).await.unwrap().status, 3);

    // A container that handles SIGTERM stops at once with its own status.
    let script = "trap 'exit 0' TERM; while :; do sleep 0.1; done";
    create(&client, &image, "polite", Kind::Workload, script, 10).await;
    client.start_task("polite", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let exit = client
        .stop("polite", Signal::SIGTERM, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(exit.status, 0);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let t = Instant::now();
    let wait = client.wait("polite", Some(Duration::from_secs(5))).await;
    assert_eq!(wait.unwrap().status, 0);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "an exited task answers Wait at once"
    );

    for id in ["three", "polite"] {
        client.delete_container(id).await.unwrap();
        client.delete_container(id).await.unwrap();
    }
    let err = client
        .wait("three", Some(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, ContainerError::NotFound { .. }), "{err}");
    assert!(client.list_containers(None).await.unwrap().is_empty());
    assert_eq!(
        snapshot_keys(&fx.ctr),
        std::slice::from_ref(&image.chain_id)
    );
    fx.ctr.stop().unwrap();
    eprintln!("exit test: {:.1}s", t0.elapsed().as_secs_f32());
}

/// The configs PID 1 writes load in the image's containerd (`containerd config dump` runs the
/// binary through the staged tree's loader; nothing is started).
#[test]
fn test_rendered_configs_load_in_the_image_containerd() {
    if !is_root() {
        return;
    }
    let layout = Layout::discover();
    let pkgs = packages(&layout);
    let rootfs = hostctr::prepare_rootfs(&layout, &pkgs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for instance in [Instance::system(), Instance::user()] {
        let path = dir.path().join(format!("{}.toml", instance.name.as_str()));
        fs::write(&path, daemon::render_config(&instance)).unwrap();
        let dump = dump_config(&rootfs, &path);
        assert!(
            dump.contains(&format!("address = \"{}\"", instance.socket.display())),
            "{dump}"
        );
        assert!(dump.contains(&format!("oom_score = {}", instance.name.oom_score())));
        assert!(dump.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
        assert!(dump.contains(&format!(
            "path = \"{}\"",
            instance.root.join("opt").display()
        )));
    }
}

fn dump_config(rootfs: &Path, config: &Path) -> String {
    let lib = rootfs.join("usr/lib/x86_64-linux-gnu");
    let out = Command::new(lib.join("ld-linux-x86-64.so.2"))
        .arg("--library-path")
        .arg(&lib)
        .arg(rootfs.join("usr/bin/containerd"))
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "containerd config dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Client connections containerd has accepted on its socket: /proc/net/unix lines (Num RefCount
/// Protocol Flags Type St Inode Path) with its path that are not the listener (flags 00010000).
fn connections(ctr: &HostContainerd) -> usize {
    let path = ctr.address();
    let path = path.to_string_lossy();
    fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 8 && f[7] == path && f[3] != "00010000")
        .count()
}

#[tokio::test]
async fn test_pool_lends_each_connection_to_a_bounded_number_of_supervisors() {
    if !is_root() {
        return;
    }
    let (ctr, _) = common::containerd_with_archives(&[]);
    drop(connect(&ctr).await);
    let idle = eventually(Duration::from_secs(5), || {
        (connections(&ctr) == 0).then_some(())
    })
    .await;
    assert!(idle.is_some(), "containerd holds {}", connections(&ctr));
    let pool = Pool::new(&ctr.address(), NS, 2);

    // Five borrowers, two per connection: three connections, each answering.
    let mut held = Vec::new();
    for _ in 0..5 {
        let b = pool.borrow(None).await.unwrap();
        assert!(b.version().await.unwrap().starts_with("1.7."));
        held.push(b);
    }
    let ids: Vec<u64> = held.iter().map(|b| b.connection()).collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[2], ids[3]);
    assert_ne!(ids[0], ids[2]);
    assert_ne!(ids[4], ids[2]);
    assert_eq!(pool.borrowers().await, [2, 2, 1]);
    let seen = eventually(Duration::from_secs(5), || {
        (connections(&ctr) == 3).then_some(())
    })
    .await;
    assert!(seen.is_some(), "containerd holds {}", connections(&ctr));

    // The first connection's borrowers leave: it is closed at the next borrow, which takes
    // the room left on the third.
    let third = held.pop().unwrap();
    held.drain(..2);
    let next = pool.borrow(None).await.unwrap();
    assert_eq!(next.connection(), third.connection());
    assert_eq!(pool.borrowers().await, [2, 2]);

    // A borrower that saw the third connection fail gets a new one; the failed one is gone.
    let renewed = pool.borrow(Some(third.connection())).await.unwrap();
    assert_ne!(renewed.connection(), third.connection());
    assert!(renewed.version().await.is_ok());
    drop((next, third));
    assert_eq!(pool.borrowers().await, [2, 1]);
    let seen = eventually(Duration::from_secs(5), || {
        (connections(&ctr) == 2).then_some(())
    })
    .await;
    assert!(seen.is_some(), "containerd holds {}", connections(&ctr));
    drop((held, renewed));
    ctr.stop().unwrap();
}
