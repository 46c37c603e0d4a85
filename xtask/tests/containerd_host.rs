//! The system images against the image's own containerd (trixie's 1.7, with runc and their
//! libraries from the pinned packages), started privately on the build host by
//! `xtask::hostctr`: import the OCI archives as `ctr images import` does, run a command in the
//! console image, run the syslog image and log to it, stop everything.
//!
//! Needs root (mount namespaces, chroot) and, the first time, network access to deb.debian.org
//! for the pinned packages (later runs take them from the cache). Skipped, loudly, when not root.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtask::fetch::{self, PackageSet};
use xtask::hostctr::{self, HostContainerd};
use xtask::layout::Layout;
use xtask::oci::{self, ImageInputs};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: a private containerd needs root");
    false
}

/// The pinned packages, fetched and extracted through the xtask library (as `cargo xtask build`
/// does: the clone's build/apt and build/extract, the shared download cache).
fn packages(layout: &Layout) -> PackageSet {
    fetch::fetch_pinned(layout, &mut |e| eprintln!("  {e}"))
        .unwrap()
        .1
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Builds every images/*/ archive into `dir`, with a shell script standing in for the static
/// `ros` binary (building ros here would take minutes and test nothing about the images).
fn build_archives(layout: &Layout, pkgs: &PackageSet, dir: &Path) -> Vec<(String, String)> {
    let ros = dir.join("ros-stand-in");
    fs::write(&ros, "#!/bin/sh\necho ros stand-in \"$@\"\n").unwrap();
    fs::set_permissions(&ros, fs::Permissions::from_mode(0o755)).unwrap();
    let inputs = ImageInputs {
        ros: &ros,
        packages: pkgs,
        version: VERSION,
        epoch: 0,
    };
    let mut out = Vec::new();
    for image in oci::discover(&layout.images()).unwrap() {
        let path = dir.join(format!("{}.oci.tar", image.name));
        let r = oci::build(&image, &inputs, &path).unwrap();
        out.push((r.reference, path.display().to_string()));
    }
    out
}

/// The PID `ctr tasks ls` shows for task `id`.
fn task_pid(ctr: &HostContainerd, id: &str) -> Option<i32> {
    let list = ctr.ctr_ok("system", &["tasks", "ls"]).ok()?;
    list.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&id) && w.get(2) == Some(&"RUNNING"))
        .and_then(|w| w.get(1)?.parse().ok())
}

#[test]
fn system_images_import_and_run_in_the_image_containerd() {
    if !is_root() {
        return;
    }
    let layout = Layout::discover();
    let pkgs = packages(&layout);
    let rootfs = hostctr::prepare_rootfs(&layout, &pkgs).unwrap();
    let ctr = HostContainerd::start(&rootfs).unwrap();
    let version = ctr.ctr_ok("default", &["version"]).unwrap();
    assert!(
        version.contains("1.7."),
        "the image's containerd: {version}"
    );
    // The socket is a plain path on the host too: clients in the test process connect directly.
    std::os::unix::net::UnixStream::connect(ctr.address()).expect("connect from the host");

    // Import both archives as they are shipped; the names come from index.json.
    let archives = build_archives(&layout, &pkgs, ctr.dir());
    for (_, path) in &archives {
        ctr.ctr_ok("system", &["images", "import", path]).unwrap();
    }
    let names = ctr.ctr_ok("system", &["images", "ls", "-q"]).unwrap();
    let console = format!("docker.io/ros/console:{VERSION}");
    let syslog = format!("docker.io/ros/syslog:{VERSION}");
    for want in [&console, &syslog] {
        assert!(
            names.lines().any(|l| l == want),
            "{want} not in images:\n{names}"
        );
    }
    assert_eq!(names.lines().count(), archives.len(), "{names}");
    // A second import of the same archive changes nothing.
    ctr.ctr_ok("system", &["images", "import", &archives[0].1])
        .unwrap();
    assert_eq!(
        ctr.ctr_ok("system", &["images", "ls", "-q"]).unwrap(),
        names
    );

    // The console image: busybox; the host's ros binary is bind-mounted at /usr/bin/ros as the
    // default config's console service does.
    let hello = ctr
        .ctr_ok(
            "system",
            &[
                "run",
                "--rm",
                &console,
                "echo-1",
                "/bin/busybox",
                "echo",
                "hello",
            ],
        )
        .unwrap();
    assert_eq!(hello.trim(), "hello");
    let ros_stand_in = ctr.dir().join("ros-stand-in");
    let ros = ctr
        .ctr_ok(
            "system",
            &[
                "run",
                "--rm",
                "--mount",
                &format!(
                    "type=bind,src={},dst=/usr/bin/ros,options=rbind:ro",
                    ros_stand_in.display()
                ),
                &console,
                "ros-1",
                "ros",
                "version",
            ],
        )
        .unwrap();
    assert_eq!(
        ros.trim(),
        "ros stand-in version",
        "PATH finds /usr/bin/ros"
    );

    // The syslog image: its entrypoint listens on /dev/log and writes /var/log/messages.
    ctr.ctr_ok("system", &["run", "-d", &syslog, "syslog-1"])
        .unwrap();
    let exec = |id: &str, args: &[&str]| {
        let mut a = vec!["tasks", "exec", "--exec-id", id, "syslog-1"];
        a.extend_from_slice(args);
        ctr.ctr_ok("system", &a)
    };
    wait_for(Duration::from_secs(20), || {
        exec("sock", &["test", "-S", "/dev/log"]).ok()
    })
    .unwrap_or_else(|| panic!("no /dev/log; containerd log:\n{}", ctr.log_tail()));
    exec(
        "log",
        &["logger", "-t", "hosttest", "hello from the host test"],
    )
    .unwrap();
    let messages = wait_for(Duration::from_secs(20), || {
        let m = exec("cat", &["cat", "/var/log/messages"]).ok()?;
        m.contains("hosttest: hello from the host test")
            .then_some(m)
    });
    assert!(
        messages.is_some(),
        "the message never reached /var/log/messages"
    );
    let args = exec("ps", &["cat", "/proc/1/cmdline"])
        .unwrap()
        .replace('\0', " ");
    assert_eq!(
        args.trim(),
        "/bin/syslogd -n -O /var/log/messages -s 1024 -b 5",
        "entrypoint + cmd"
    );

    // The task's PID as containerd reports it maps to the syslogd process on the host.
    let pid = task_pid(&ctr, "syslog-1").expect("syslog-1 running in `ctr tasks ls`");
    let host = ctr.host_pid(pid).expect("host PID of the task");
    let comm = fs::read_to_string(format!("/proc/{host}/comm")).unwrap();
    assert_eq!(comm.trim(), "syslogd");

    ctr.ctr_ok("system", &["tasks", "kill", "-s", "SIGKILL", "syslog-1"])
        .unwrap();
    wait_for(Duration::from_secs(20), || {
        ctr.ctr_ok("system", &["tasks", "rm", "syslog-1"]).ok()
    })
    .expect("the killed task can be removed");
    ctr.ctr_ok("system", &["containers", "rm", "syslog-1"])
        .unwrap();
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(host), None).is_err(),
        "syslogd is gone"
    );
    let dir = ctr.dir().to_owned();
    ctr.stop().unwrap();
    assert!(!dir.exists(), "the scratch directory is removed");
}

/// The console's entry script, on a real pseudo-terminal (`ctr run -t` under `script`, as the
/// console service gets ttyS0): it starts a login shell that owns the tty (job control on), and
/// runs what is typed.
#[test]
fn console_image_gives_a_shell_on_its_tty() {
    if !is_root() {
        return;
    }
    let layout = Layout::discover();
    let pkgs = packages(&layout);
    let rootfs = hostctr::prepare_rootfs(&layout, &pkgs).unwrap();
    let ctr = HostContainerd::start(&rootfs).unwrap();
    let archives = build_archives(&layout, &pkgs, ctr.dir());
    let (console, path) = archives
        .iter()
        .find(|(r, _)| r.contains("/ros/console:"))
        .unwrap();
    ctr.ctr_ok("system", &["images", "import", path]).unwrap();

    let inner = format!(
        "nsenter --target={} --mount --pid --root --wd -- /usr/bin/ctr --address {} -n system \
         run -t --privileged --rm --env CONSOLE_TTY=/dev/console {console} console-1",
        ctr.pid(),
        ctr.address().display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut typed = false;
    while Instant::now() < deadline && !seen.contains("marker-42") {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        if !typed && seen.contains('#') {
            stdin
                .write_all(b"echo marker-$((6*7)) tty=$(tty)\n")
                .unwrap();
            typed = true;
        }
    }
    let _ = ctr.ctr("system", &["tasks", "kill", "-s", "SIGKILL", "console-1"]);
    let _ = child.wait();
    assert!(seen.contains("marker-42"), "console output:\n{seen}");
    assert!(
        !seen.contains("job control turned off"),
        "the shell must own the tty:\n{seen}"
    );
    ctr.stop().unwrap();
}
