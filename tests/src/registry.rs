//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on
//! `127.0.0.1:<free port>` with its storage in a temp dir, optionally behind htpasswd basic
//! auth, and images pushed into it with `skopeo copy` from OCI archives.
//!
//! Owns the registry process (killed and reaped on drop) and its files. Listens on loopback
//! only; a VM reaches it through QEMU `guestfwd`. Needs `docker-registry`, `skopeo` and
//! `htpasswd` (apache2-utils) on the host — `scripts/lib/common.sh` installs them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the registry may take to answer after it started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("docker-registry did not answer on {addr} within {secs}s; its log:\n{log}")]
    Start {
        addr: String,
        secs: u64,
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let what = what.into();
    move |source| RegistryError::Io { what, source }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (and is closed now: also the address of
/// an "unreachable" registry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running registry.
pub struct TestRegistry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    creds: Option<(String, String)>,
}

impl TestRegistry {
    /// Starts a registry; with `creds`, every request needs them (htpasswd, bcrypt).
    pub fn start(creds: Option<(&str, &str)>) -> Result<Self, RegistryError> {
        let dir = tempfile::Builder::new()
            .prefix("ros-registry.")
            .tempdir()
            .map_err(io("temp dir"))?;
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).map_err(io(storage.display().to_string()))?;
        let mut auth = String::new();
        if let Some((user, pass)) = creds {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .map_err(io("htpasswd"))?;
            if !out.status.success() {
                return Err(RegistryError::Command {
                    command: format!("htpasswd -Bbn {user} ***"),
                    status: out.status,
                    output: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).map_err(io(file.display().to_string()))?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: ros-test\n    path: {}\n",
                file.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(io(config_path.display().to_string()))?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).map_err(io(log_path.display().to_string()))?;
        let log_err = log.try_clone().map_err(io("registry log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io("docker-registry serve"))?;
        let reg = TestRegistry {
            child,
            dir,
            port,
            creds: creds.map(|(u, p)| (u.to_owned(), p.to_owned())),
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&self) -> Result<(), RegistryError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = probe(self.port) {
                if status == 200 || status == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(RegistryError::Start {
                    addr: self.host(),
                    secs: START_TIMEOUT.as_secs(),
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the one image in OCI archive `archive` as `<host>/<repo_tag>` (`ros/console:1`).
    pub fn push(&self, archive: &Path, repo_tag: &str) -> Result<(), RegistryError> {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()));
        let out = cmd.output().map_err(io("skopeo copy"))?;
        if !out.status.success() {
            return Err(RegistryError::Command {
                command: format!("skopeo copy oci-archive:{} {repo_tag}", archive.display()),
                status: out.status,
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// `GET /v2/<repo>/manifests/<reference>` (anonymous), accepting OCI and Docker manifests:
    /// the status and the body.
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(u16, Vec<u8>), RegistryError> {
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        http(
            self.port,
            &format!("GET /v2/{repo}/manifests/{reference} HTTP/1.0\r\nHost: {}\r\nAccept: {accept}\r\n\r\n", self.host()),
            &[],
        )
    }

    /// `PUT /v2/<repo>/manifests/<reference>` (anonymous) of `body` as `media_type`: the status.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<u16, RegistryError> {
        let head = format!(
            "PUT /v2/{repo}/manifests/{reference} HTTP/1.0\r\nHost: {}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\n\r\n",
            self.host(),
            body.len()
        );
        http(self.port, &head, body).map(|(status, _)| status)
    }

    /// The scratch directory (storage, config, log).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// The HTTP status of `GET /v2/` on 127.0.0.1:`port`, if it answers.
fn probe(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// One HTTP/1.0 exchange with 127.0.0.1:`port`: the status and the body.
fn http(port: u16, head: &str, body: &[u8]) -> Result<(u16, Vec<u8>), RegistryError> {
    let what = || {
        format!(
            "HTTP to 127.0.0.1:{port}: {}",
            head.lines().next().unwrap_or_default()
        )
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(io(what()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io(what()))?;
    s.write_all(head.as_bytes()).map_err(io(what()))?;
    s.write_all(body).map_err(io(what()))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(io(what()))?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |i| i + 4);
    let status = String::from_utf8_lossy(&out[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out[split..].to_vec()))
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
