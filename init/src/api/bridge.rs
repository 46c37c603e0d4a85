//! A ready-made `Node` for PID 1: what needs no fleet runs here, in the API's runtime; what
//! needs the fleet (or anything else the serve loop owns) is sent to the serve loop as a
//! `Request` with a reply channel.
//!
//! Owns: the request type, the channel (a std mpsc plus a socketpair whose readable end the serve
//! loop adds to its poll set, so a request wakes it at once), and `BridgeNode`: `effective` from
//! boot's `Layers`; `reconcile` applying the kernel part (`host`) itself and forwarding the rest
//! of the plan (network, services, workloads, limits, registries) only when the plan touches it;
//! logs from the log directory plus the boot log's lines; `status` with uptime and hostname plus
//! whatever the serve loop adds; `power` queued without waiting (the reply must reach the client
//! before the shutdown starts).
//! Must not: block the serve loop (it only drains, answers and goes on) or touch the fleet.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::host;
use super::logs::{self, Source};
use super::node::{Layers, LogQuery, LogStream, Node, NodeError, ServiceAction};
use super::proto;
use crate::config::{Config, ConfigError, Layer, Plan};
use crate::power::PowerAction;

/// The answer to a request.
pub type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// What the API asks of PID 1's serve loop. Answer each through its `reply` (dropping it
/// answers "the node went away").
#[derive(Debug)]
pub enum Request {
    /// Apply the non-kernel part of `plan` (network, DNS, services, workloads, limits.user,
    /// registries), from `old` to `new`. The kernel part is already done.
    Reconcile {
        /// The config the node runs.
        old: Box<Config>,
        /// The config to run.
        new: Box<Config>,
        /// What differs.
        plan: Box<Plan>,
        /// One line per thing done.
        reply: Reply<Vec<String>>,
    },
    /// The configured services with their state (`ros service list`).
    Services {
        /// The rows.
        reply: Reply<Vec<proto::Container>>,
    },
    /// Start, stop or restart a service.
    Service {
        /// The service.
        name: String,
        /// What to do.
        action: ServiceAction,
        /// A line saying what happened.
        reply: Reply<String>,
    },
    /// Every container of both namespaces (`ros ps`).
    Ps {
        /// The rows.
        reply: Reply<Vec<proto::Container>>,
    },
    /// Facts for `ros os status` beyond uptime and hostname (ready, network, containerds…).
    Status {
        /// (name, value) pairs.
        reply: Reply<Vec<(String, String)>>,
    },
    /// Start an ordered shutdown; nobody waits for it.
    Power(PowerAction),
}

/// The serve loop's end: poll `fd()` for reading, then `drain()`.
#[derive(Debug)]
pub struct Requests {
    rx: mpsc::Receiver<Request>,
    wake: UnixStream,
}

impl Requests {
    /// Readable when requests are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Every waiting request, oldest first (never blocks).
    pub fn drain(&self) -> Vec<Request> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

/// The API's end of the channel.
#[derive(Debug)]
struct Sender {
    tx: Mutex<mpsc::Sender<Request>>,
    wake: UnixStream,
}

impl Sender {
    fn send(&self, r: Request) -> Result<(), NodeError> {
        let gone = || NodeError::Unavailable {
            what: "ros daemon".to_string(),
            reason: "its serve loop is not taking requests".to_string(),
        };
        self.tx
            .lock()
            .map_err(|_| gone())?
            .send(r)
            .map_err(|_| gone())?;
        // A full socket buffer means a wake-up is already pending.
        let _ = (&self.wake).write(&[1]);
        Ok(())
    }
}

/// Creates the channel: the API's sending end (inside `BridgeNode`) and the serve loop's end.
fn channel() -> std::io::Result<(Sender, Requests)> {
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        Sender {
            tx: Mutex::new(tx),
            wake: a,
        },
        Requests { rx, wake: b },
    ))
}

/// The `Node` PID 1 hands to `Engine::new`.
pub struct BridgeNode {
    layers: Layers,
    log_dir: PathBuf,
    boot_log: fn() -> Vec<String>,
    sender: Sender,
}

impl BridgeNode {
    /// A node over boot's `layers`, the container logs in `log_dir` (`/var/log/ros`) and the
    /// boot log's lines (`kmsg::recent`); the serve loop takes the returned `Requests`.
    pub fn new(
        layers: Layers,
        log_dir: PathBuf,
        boot_log: fn() -> Vec<String>,
    ) -> std::io::Result<(BridgeNode, Requests)> {
        let (sender, requests) = channel()?;
        Ok((
            BridgeNode {
                layers,
                log_dir,
                boot_log,
                sender,
            },
            requests,
        ))
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.sender.send(make(tx))?;
        rx.await.unwrap_or_else(|_| {
            Err(NodeError::Unavailable {
                what: "ros daemon".to_string(),
                reason: "the request was dropped unanswered".to_string(),
            })
        })
    }
}

/// True when `plan` touches more than the kernel settings.
pub fn beyond_kernel(plan: &Plan) -> bool {
    !plan.interfaces.is_empty()
        || plan.dns
        || !plan.services.is_empty()
        || !plan.workloads.is_empty()
        || plan.limits_user.is_some()
        || !plan.registries.is_empty()
}

#[async_trait::async_trait]
impl Node for BridgeNode {
    fn effective(&self, local: Option<&Layer>) -> Result<Config, ConfigError> {
        self.layers.effective(local)
    }

    async fn reconcile(
        &self,
        old: &Config,
        new: &Config,
        plan: &Plan,
    ) -> Result<Vec<String>, NodeError> {
        let mut done = host::reconcile_kernel_live(new, plan)?;
        if beyond_kernel(plan) {
            let rest = self
                .ask(|reply| Request::Reconcile {
                    old: Box::new(old.clone()),
                    new: Box::new(new.clone()),
                    plan: Box::new(plan.clone()),
                    reply,
                })
                .await?;
            done.extend(rest);
        }
        Ok(done)
    }

    async fn services(&self) -> Result<Vec<proto::Container>, NodeError> {
        self.ask(|reply| Request::Services { reply }).await
    }

    async fn service(&self, name: &str, action: ServiceAction) -> Result<String, NodeError> {
        let name = name.to_string();
        self.ask(|reply| Request::Service {
            name,
            action,
            reply,
        })
        .await
    }

    async fn ps(&self) -> Result<Vec<proto::Container>, NodeError> {
        self.ask(|reply| Request::Ps { reply }).await
    }

    async fn logs(&self, query: LogQuery) -> Result<LogStream, NodeError> {
        let mut sources = logs::sources_in(&self.log_dir);
        match &query.name {
            Some(name) => {
                sources.retain(|s| matches!(s, Source::File { name: n, .. } if n == name));
                if sources.is_empty() {
                    return Err(NodeError::NotFound {
                        kind: "log",
                        name: name.clone(),
                    });
                }
            }
            None => sources.insert(
                0,
                Source::Lines {
                    name: "boot".to_string(),
                    lines: (self.boot_log)(),
                },
            ),
        }
        Ok(logs::stream(sources, query.tail, query.follow))
    }

    async fn status(&self) -> Vec<(String, String)> {
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let uptime = crate::boot::kmsg::uptime();
        let mut fields = vec![
            ("hostname".to_string(), hostname),
            ("uptime".to_string(), format!("{uptime:.0}s")),
        ];
        if let Ok(more) = self.ask(|reply| Request::Status { reply }).await {
            fields.extend(more);
        }
        fields
    }

    async fn power(&self, action: PowerAction) -> Result<(), NodeError> {
        self.sender.send(Request::Power(action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::effective;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    fn config(text: &str) -> Config {
        effective(&[Layer::parse("local", text).unwrap()]).unwrap()
    }

    /// A serve loop in a thread: waits on the fd, answers every request.
    fn serve_loop(requests: Requests) -> std::thread::JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                let mut fds = [PollFd::new(requests.fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(5000u16)).unwrap_or(0) <= 0 {
                    return seen;
                }
                for r in requests.drain() {
                    match r {
                        Request::Reconcile { plan, reply, .. } => {
                            seen.push("reconcile".to_string());
                            let _ = reply.send(Ok(plan.lines()));
                        }
                        Request::Ps { reply } => {
                            seen.push("ps".to_string());
                            let _ = reply.send(Ok(Vec::new()));
                        }
                        Request::Service { name, reply, .. } => {
                            seen.push(format!("service {name}"));
                            let _ = reply.send(Err(NodeError::NotFound {
                                kind: "service",
                                name,
                            }));
                        }
                        Request::Services { reply } => drop(reply),
                        Request::Status { reply } => {
                            let _ = reply.send(Ok(vec![("ready".into(), "yes".into())]));
                        }
                        Request::Power(action) => {
                            seen.push(action.name().to_string());
                            return seen;
                        }
                    }
                }
            }
        })
    }

    #[tokio::test]
    async fn requests_reach_the_serve_loop_and_come_back() {
        let d = tempfile::tempdir().unwrap();
        let (node, requests) =
            BridgeNode::new(Layers::default(), d.path().to_path_buf(), Vec::new).unwrap();
        let loop_thread = serve_loop(requests);
        let old = config("version = 1\n");
        let new = config("[workloads.web]\nimage = \"nginx\"\n");
        let plan = Plan::between(&old, &new);
        assert!(beyond_kernel(&plan));
        assert_eq!(
            node.reconcile(&old, &new, &plan).await.unwrap(),
            ["+ workload web"]
        );
        assert!(node.ps().await.unwrap().is_empty());
        let e = node.service("x", ServiceAction::Stop).await.unwrap_err();
        assert_eq!(e.to_string(), "service \"x\": no such service");
        // A dropped reply is an answer too.
        let e = node.services().await.unwrap_err();
        assert!(matches!(e, NodeError::Unavailable { .. }), "{e}");
        let status = node.status().await;
        assert_eq!(status[0].0, "hostname");
        assert_eq!(status[2], ("ready".to_string(), "yes".to_string()));
        node.power(PowerAction::Poweroff).await.unwrap();
        let seen = loop_thread.join().unwrap();
        assert_eq!(seen, ["reconcile", "ps", "service x", "poweroff"]);
    }

    #[tokio::test]
    async fn a_kernel_only_plan_never_bothers_the_serve_loop() {
        let old = config("version = 1\n");
        let new = config("[kernel]\nmodules = []\n[network]\nwait = \"none\"\n");
        let plan = Plan::between(&old, &new);
        assert!(!beyond_kernel(&plan));
        let d = tempfile::tempdir().unwrap();
        let (node, requests) =
            BridgeNode::new(Layers::default(), d.path().to_path_buf(), Vec::new).unwrap();
        assert!(node.reconcile(&old, &new, &plan).await.unwrap().is_empty());
        assert!(requests.drain().is_empty());
        // A gone serve loop is reported, not waited for.
        drop(requests);
        let e = node.ps().await.unwrap_err();
        assert!(matches!(e, NodeError::Unavailable { .. }), "{e}");
    }

    #[tokio::test]
    async fn logs_come_from_the_log_directory_and_the_boot_ring() {
        use futures::StreamExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("syslog.log"), "s1\n").unwrap();
        fn boot() -> Vec<String> {
            vec!["ros: ready in 1.000s".to_string()]
        }
        let (node, _requests) =
            BridgeNode::new(Layers::default(), d.path().to_path_buf(), boot).unwrap();
        let all: Vec<_> = node
            .logs(LogQuery {
                name: None,
                follow: false,
                tail: None,
            })
            .await
            .unwrap()
            .map(|l| format!("{}: {}", l.source, l.line))
            .collect()
            .await;
        assert_eq!(all, ["boot: ros: ready in 1.000s", "syslog: s1"]);
        let e = node
            .logs(LogQuery {
                name: Some("nope".into()),
                follow: false,
                tail: None,
            })
            .await
            .err();
        assert!(matches!(e, Some(NodeError::NotFound { kind: "log", .. })));
    }
}
