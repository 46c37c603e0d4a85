//! The containers PID 1 runs: `[services.*]` in the system containerd (namespace `system`,
//! cgroup `/ros/system/<name>`) and `[workloads.*]` in the user containerd (namespace `user`,
//! cgroup `/ros/user/user/<name>`, inside the fence).
//!
//! Owns the tokio runtime the containerd clients live in, the start order (waves from
//! `depends_on`; a one-shot must exit 0 before its dependents start), admission
//! (`limits.user.max_containers`), one supervising task per container (wait for the task's exit,
//! restart policy and backoff, a new task on the same container; its client borrowed from the
//! daemon's shared connections, `runtime::pool`) and the ordered stop.
//!
//! Must not: spawn or wait for processes (containerd's shims run the containers; PID 1's reaper
//! owns the containerd daemons). A containerd that goes away is waited for: each supervisor
//! reconnects once it answers again and restarts its task if the task is gone.
//!
//! Image resolution: services run bundled images; a workload's `image` is a bundled image
//! (imported by the starter), `oci-archive:PATH` (imported by its supervisor) or a registry
//! reference (pulled by its supervisor with `[registries]`, `runtime::pull`). A failed import or
//! pull fails that workload (`ros: workload NAME: image IMAGE: …; retry N in Ds`) and is retried
//! with the restart backoff; workloads start after `ready`, so a pull never holds it back.
//!
//! Bridge workloads (`net = "bridge"`, the workloads' default): each task is preceded by an
//! attach to `ros0` (`bridge_net`: CNI ADD, the container's resolv.conf; the OCI spec joins the
//! namespace at a path fixed per container) and followed by a detach once it ended — a crash,
//! an exit, a stop — so a restart gets a fresh attachment and no lease or rule outlives its
//! task. An attach failure fails that start like a start error (restart policy, backoff).
//!
//! Limitations: restart counts live in memory.

use crate::boot::{kmsg, sysimage};
use crate::config::schema::{Container, Kind, NetMode, Registry};
use crate::config::Config;
use crate::runtime::containers::{parse_signal, NewContainer, TaskState};
use crate::runtime::daemon::{self, Instance};
use crate::runtime::logs::{LogSink, Rotation, Stream};
use crate::runtime::pool::{Borrowed, Pool};
use crate::runtime::{bundled, pull, spec, Client};
use crate::supervisor::bridge_net::BridgeNet;
use crate::supervisor::graph;
use crate::supervisor::policy::{self, Backoff, Ended};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Container logs (`<name>.log`) and the daemons' own logs.
pub const LOG_DIR: &str = "/var/log/ros";
/// The stdio FIFOs of tasks (a host path the shims see too).
const IO_DIR: &str = "/run/ros/io";
/// How long boot waits for a containerd to answer.
pub const DAEMON_READY: Duration = Duration::from_secs(30);
/// How long a wave waits for a one-shot to exit 0 (or a service to start).
const WAVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Margin on top of `stop_timeout_s` before a stop is given up on.
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// One import or pull at a time: two workloads naming the same image would otherwise write the
/// same blobs at once (containerd refuses the second writer of a ref: `ref … locked`). The
/// second one then finds the image present.
static IMAGE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Containers being created or started at once: two per CPU. Each start is a shim and a runc
/// (Go processes, a few MiB each) forked at once; 100 workloads started together on 2 vCPUs
/// thrashed the node for minutes (the debug shell did not answer `ctr task ls` in 120 s), while
/// queued starts keep it responsive and finish no later.
fn start_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(2 * cpus)
    })
}

/// A stop was requested while waiting for a start slot.
struct Stopped;

/// Waits for a start slot (held until the permit drops), or for a stop request. The semaphore
/// is never closed, so `acquire` cannot fail; if it did, the start would go ahead unqueued.
async fn start_slot(
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<tokio::sync::SemaphorePermit<'static>>, Stopped> {
    if *stop.borrow() {
        return Err(Stopped);
    }
    tokio::select! {
        p = start_slots().acquire() => Ok(p.ok()),
        _ = stop.changed() => Err(Stopped),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "service",
        Kind::Workload => "workload",
    }
}

mod live;

/// Where one container stands, as its supervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    Running {
        pid: u32,
    },
    /// Exited and not restarted (`ok`: status 0).
    Done {
        ok: bool,
    },
    /// Never got a task (image, spec or create failed).
    Failed,
}

/// One supervised container.
struct Unit {
    name: String,
    kind: Kind,
    /// What it runs, to start it again (`ros service start`) and to list it.
    job: Job,
    stop_timeout: Duration,
    stop_tx: watch::Sender<bool>,
    state_rx: watch::Receiver<State>,
    restarts: Arc<Mutex<u32>>,
    join: JoinHandle<()>,
}

/// What a supervisor needs to run one container.
#[derive(Clone)]
struct Job {
    name: String,
    kind: Kind,
    container: Container,
    socket: std::path::PathBuf,
    namespace: &'static str,
    image: String,
    /// How `image` gets into the namespace.
    source: ImageSource,
    cgroups_path: String,
    /// The network driver for a `net = "bridge"` container; `None` for the others (and when
    /// the node has no workload networking).
    bridge: Option<BridgeNet>,
}

/// Where a container's image comes from.
#[derive(Debug, Clone)]
enum ImageSource {
    /// Already in the namespace (a bundled image, imported before the container starts).
    Present,
    /// `oci-archive:PATH`: imported by the supervisor.
    Archive(PathBuf),
    /// A registry reference, pulled by the supervisor with these `[registries]` settings.
    Registry(Arc<BTreeMap<String, Registry>>),
}

/// The prefix that names an OCI archive on the node as a workload's image.
pub const OCI_ARCHIVE: &str = "oci-archive:";

/// How a workload's `image` is obtained: bundled, `oci-archive:PATH`, or a registry pull.
fn workload_source(
    image: &str,
    registries: &Arc<BTreeMap<String, Registry>>,
) -> Result<bundled::Bundled, ImageSource> {
    if let Some(path) = image.strip_prefix(OCI_ARCHIVE) {
        return Err(ImageSource::Archive(PathBuf::from(path)));
    }
    bundled::lookup(Path::new(sysimage::ARCHIVES), image)
        .ok_or_else(|| ImageSource::Registry(registries.clone()))
}

/// The containers of the node and the runtime their clients run in.
pub struct Fleet {
    rt: tokio::runtime::Runtime,
    services: Arc<Mutex<Vec<Unit>>>,
    /// Services stopped through the API (`ros service stop`), to start again.
    stopped: Arc<Mutex<BTreeMap<String, Job>>>,
    service_waves: Vec<Vec<String>>,
    workloads: Arc<Mutex<Vec<Unit>>>,
    workload_starter: Option<JoinHandle<()>>,
    /// Workload networking (`ros0`), once PID 1 set it up.
    bridge: Option<BridgeNet>,
}

impl Fleet {
    pub fn new() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ros-containers")
            .enable_all()
            .build()?;
        Ok(Fleet {
            rt,
            services: Arc::new(Mutex::new(Vec::new())),
            stopped: Arc::new(Mutex::new(BTreeMap::new())),
            service_waves: Vec::new(),
            workloads: Arc::new(Mutex::new(Vec::new())),
            workload_starter: None,
            bridge: None,
        })
    }

    /// Gives the fleet its workload networking: bridge workloads attach through it. Without
    /// it a bridge workload fails to start, naming why.
    pub fn set_bridge(&mut self, bridge: BridgeNet) {
        self.bridge = Some(bridge);
    }

    /// Runs `fut` to completion on the calling thread, calling `reap` every 50 ms meanwhile.
    /// For PID 1's main thread, which delivers the exits of the helpers (CNI plugins) that a
    /// workload's stop waits for: blocking it in a plain `block_on` would hold those exits
    /// back until the helpers time out.
    pub fn block_on_reaping<F: Future>(&self, fut: F, reap: &mut dyn FnMut()) -> F::Output {
        self.rt.block_on(async {
            let mut fut = std::pin::pin!(fut);
            loop {
                tokio::select! {
                    out = &mut fut => return out,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => reap(),
                }
            }
        })
    }

    /// Waits (bounded) for `instance` to answer; logs the outcome. True when it answers.
    pub fn wait_daemon(&self, instance: &Instance) -> bool {
        let started = Instant::now();
        match self
            .rt
            .block_on(daemon::wait_ready(&instance.socket, DAEMON_READY))
        {
            Ok(version) => {
                log::info!(
                    "containerd {} {version} answers after {:.3}s",
                    instance.name.as_str(),
                    started.elapsed().as_secs_f64()
                );
                true
            }
            Err(e) => {
                log::error!("containerd {}: {e}", instance.name.as_str());
                false
            }
        }
    }

    /// Imports the bundled archives into the system containerd's `system` namespace: those the
    /// enabled services name before returning, the others in the background (a config that
    /// runs no containers does not wait for imports: ~2 s under TCG).
    pub fn import_bundled(&self, instance: &Instance, config: &Config) {
        let dir = Path::new(sysimage::ARCHIVES);
        let needed: BTreeSet<std::path::PathBuf> = config
            .services
            .values()
            .filter(|c| c.enabled)
            .filter_map(|c| bundled::lookup(dir, &c.image))
            .map(|b| b.archive)
            .collect();
        let (now, later): (Vec<bundled::Bundled>, Vec<bundled::Bundled>) = bundled::all(dir)
            .into_iter()
            .partition(|b| needed.contains(&b.archive));
        let socket = instance.socket.clone();
        let namespace = instance.namespace();
        let import = |archives: Vec<bundled::Bundled>| async move {
            if archives.is_empty() {
                return;
            }
            match Client::connect(&socket, namespace).await {
                Ok(client) => {
                    for b in &archives {
                        import_one(&client, b).await;
                    }
                }
                Err(e) => log::error!("import: {e}"),
            }
        };
        self.rt.block_on(import.clone()(now));
        self.rt.spawn(import(later));
    }

    /// Starts the enabled services wave by wave; returns once every one is running (one-shots:
    /// exited 0), failed, or `WAVE_TIMEOUT` passed for its wave. A service whose dependency
    /// failed is not started.
    pub fn start_services(&mut self, config: &Config) {
        let enabled: BTreeMap<&String, &Container> =
            config.services.iter().filter(|(_, c)| c.enabled).collect();
        let deps: BTreeMap<String, Vec<String>> = enabled
            .iter()
            .map(|(n, c)| ((*n).clone(), c.depends_on.clone()))
            .collect();
        let waves = match graph::start_waves(&deps) {
            Ok(w) => w,
            Err(e) => {
                log::error!("services: {e}; none started");
                return;
            }
        };
        let instance = Instance::system();
        let mut failed: BTreeSet<String> = BTreeSet::new();
        for wave in &waves {
            let mut started = Vec::new();
            for name in wave {
                let Some(c) = enabled.get(name) else { continue };
                if let Some(dep) = c.depends_on.iter().find(|d| failed.contains(*d)) {
                    kmsg::console(&format!(
                        "service {name}: not started: its dependency {dep} failed"
                    ));
                    failed.insert(name.clone());
                    continue;
                }
                let job = service_job(&instance, name, c);
                let unit = spawn_unit(self.rt.handle(), job);
                started.push((name.clone(), c.oneshot, unit.state_rx.clone()));
                if let Ok(mut s) = self.services.lock() {
                    s.push(unit);
                }
            }
            for (name, oneshot, rx) in started {
                if !self.rt.block_on(settled(&name, rx, oneshot)) {
                    failed.insert(name);
                }
            }
        }
        self.service_waves = waves;
    }

    /// Starts the enabled workloads in the background (DESIGN.md step 9: after `ready`, never
    /// holding it back): waits for the user containerd, imports the bundled images they name,
    /// admits at most `limits.user.max_containers`, then starts them wave by wave.
    pub fn start_workloads(&mut self, config: &Config) {
        let enabled: BTreeMap<String, Container> = config
            .workloads
            .iter()
            .filter(|(_, c)| c.enabled)
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        if enabled.is_empty() {
            return;
        }
        let max = config.limits.user.max_containers as usize;
        let registries = Arc::new(config.registries.clone());
        // Pulls need CA certificates (even over plain HTTP, see pull::ensure_ca_bundle).
        match pull::ensure_ca_bundle(Path::new(pull::CA_BUNDLE)) {
            Ok(true) => log::info!("wrote the compiled-in CA bundle to {}", pull::CA_BUNDLE),
            Ok(false) => {}
            Err(e) => log::warn!("{}: {e}; registry pulls will fail", pull::CA_BUNDLE),
        }
        let units = self.workloads.clone();
        let handle = self.rt.handle().clone();
        let bridge = self.bridge.clone();
        let bridged = |c: &Container| job_bridge(bridge.as_ref(), Kind::Workload, c).is_some();
        if let Some(b) = bridge.as_ref().filter(|_| enabled.values().any(bridged)) {
            // Modules, rules and the boot cleanup overlap containerd's start and the imports.
            let b = b.clone();
            self.rt.spawn(async move { b.start().await });
        }
        self.workload_starter = Some(self.rt.spawn(async move {
            let instance = Instance::user();
            if let Err(e) = daemon::wait_ready(&instance.socket, DAEMON_READY).await {
                log::error!("workloads not started: containerd user: {e}");
                return;
            }
            let client = match Client::connect(&instance.socket, instance.namespace()).await {
                Ok(c) => c,
                Err(e) => return log::error!("workloads not started: {e}"),
            };
            let deps: BTreeMap<String, Vec<String>> = enabled
                .iter()
                .map(|(n, c)| (n.clone(), c.depends_on.clone()))
                .collect();
            let waves = match graph::start_waves(&deps) {
                Ok(w) => w,
                Err(e) => return log::error!("workloads: {e}; none started"),
            };
            let mut admitted = 0usize;
            let mut imported: BTreeSet<std::path::PathBuf> = BTreeSet::new();
            let mut failed: BTreeSet<String> = BTreeSet::new();
            let last = waves.len().saturating_sub(1);
            for (i, wave) in waves.into_iter().enumerate() {
                let mut started = Vec::new();
                for name in wave {
                    let Some(c) = enabled.get(&name) else { continue };
                    if admitted >= max {
                        kmsg::console(&format!(
                            "workload {name}: not created: limits.user.max_containers = {max} reached"
                        ));
                        failed.insert(name);
                        continue;
                    }
                    if let Some(dep) = c.depends_on.iter().find(|d| failed.contains(*d)) {
                        kmsg::console(&format!(
                            "workload {name}: not started: its dependency {dep} failed"
                        ));
                        failed.insert(name);
                        continue;
                    }
                    admitted += 1;
                    let job =
                        workload_job(&instance, &client, &name, c, &registries, &mut imported, bridge.as_ref())
                            .await;
                    let unit = spawn_unit(&handle, job);
                    started.push((name.clone(), c.oneshot, unit.state_rx.clone()));
                    if let Ok(mut u) = units.lock() {
                        u.push(unit);
                    }
                }
                // Nothing depends on the last wave: its units are left to their supervisors.
                if i == last {
                    break;
                }
                for (name, oneshot, rx) in started {
                    if !settled(&name, rx, oneshot).await {
                        failed.insert(name);
                    }
                }
            }
        }));
    }

    /// The ordered stop (DESIGN.md step 10): workloads, then services in reverse start-wave
    /// order, each within its `stop_timeout_s` (plus a margin). Bounded. `reap` delivers the
    /// exits of helpers meanwhile (a bridge workload's detach runs CNI plugins; see
    /// [`Fleet::block_on_reaping`]).
    pub fn shutdown(&mut self, reap: &mut dyn FnMut()) {
        if let Some(starter) = self.workload_starter.take() {
            starter.abort();
        }
        let workloads: Vec<Unit> = self
            .workloads
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        self.block_on_reaping(stop_units(workloads), reap);
        let mut services: Vec<Unit> = self
            .services
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        for wave in self.service_waves.iter().rev() {
            let (now, rest): (Vec<Unit>, Vec<Unit>) =
                services.into_iter().partition(|u| wave.contains(&u.name));
            services = rest;
            self.rt.block_on(stop_units(now));
        }
        self.rt.block_on(stop_units(services));
    }
}

/// The job of service `name`: a bundled image (imported at boot) or one already present.
fn service_job(instance: &Instance, name: &str, c: &Container) -> Job {
    let image = bundled::lookup(Path::new(sysimage::ARCHIVES), &c.image)
        .map(|b| b.name)
        .unwrap_or_else(|| bundled::normalize(&c.image));
    Job {
        name: name.to_string(),
        kind: Kind::Service,
        container: c.clone(),
        socket: instance.socket.clone(),
        namespace: instance.namespace(),
        image,
        source: ImageSource::Present,
        cgroups_path: format!("/ros/system/{name}"),
        bridge: None,
    }
}

/// The job of workload `name`, importing a bundled image it names into the user namespace
/// (once per archive in `imported`); archives and registry images are the supervisor's.
async fn workload_job(
    instance: &Instance,
    client: &Client,
    name: &str,
    c: &Container,
    registries: &Arc<BTreeMap<String, Registry>>,
    imported: &mut BTreeSet<PathBuf>,
    bridge: Option<&BridgeNet>,
) -> Job {
    let (image, source) = match workload_source(&c.image, registries) {
        Ok(b) => {
            if imported.insert(b.archive.clone()) {
                import_one(client, &b).await;
            }
            (b.name, ImageSource::Present)
        }
        Err(source) => (c.image.clone(), source),
    };
    Job {
        name: name.to_string(),
        kind: Kind::Workload,
        container: c.clone(),
        socket: instance.socket.clone(),
        namespace: instance.namespace(),
        image,
        source,
        // Relative to the user containerd's cgroup namespace, rooted at the fence
        // (`fence_ns`): `/ros/user/user/<name>` on the host, beside `ctr run`'s.
        cgroups_path: format!("/{}/{name}", instance.namespace()),
        bridge: job_bridge(bridge, Kind::Workload, c),
    }
}

/// The network driver a container's `Job` carries: the fleet's, for a `net = "bridge"` one.
/// (Whatever builds a workload's `Job` — the boot's start, a live start — sets it this way.)
fn job_bridge(bridge: Option<&BridgeNet>, kind: Kind, c: &Container) -> Option<BridgeNet> {
    bridge
        .filter(|_| c.net_mode(kind) == NetMode::Bridge)
        .cloned()
}

/// Imports one bundled archive and logs what happened.
async fn import_one(client: &Client, b: &bundled::Bundled) {
    let started = Instant::now();
    match client.import_archive(&b.archive, None).await {
        Ok(i) if i.already_present => log::info!(
            "image {} already present in {}/{}",
            i.name,
            client.socket().display(),
            client.namespace()
        ),
        Ok(i) => log::info!(
            "image {} imported into {} ({} blobs, {} layers) in {:.3}s",
            i.name,
            client.namespace(),
            i.blobs_written,
            i.layers_unpacked,
            started.elapsed().as_secs_f64()
        ),
        Err(e) => log::error!("import {}: {e}", b.archive.display()),
    }
}

/// Waits until a unit is running (one-shot: exited 0). False when it failed or timed out.
async fn settled(name: &str, rx: watch::Receiver<State>, oneshot: bool) -> bool {
    match wait_settled(rx, oneshot, WAVE_TIMEOUT).await {
        Some(State::Running { .. } | State::Done { ok: true }) => true,
        Some(_) => false,
        None => {
            log::error!(
                "{name} did not become ready within {}s; its dependents are not started",
                WAVE_TIMEOUT.as_secs()
            );
            false
        }
    }
}

/// Waits at most `limit` until a unit runs (a one-shot: has exited) or failed, and returns that
/// state; a supervisor gone counts as failed; `None` when the time ran out.
async fn wait_settled(
    mut rx: watch::Receiver<State>,
    oneshot: bool,
    limit: Duration,
) -> Option<State> {
    let wait = rx.wait_for(|s| match s {
        State::Starting => false,
        State::Running { .. } => !oneshot,
        State::Done { .. } | State::Failed => true,
    });
    match tokio::time::timeout(limit, wait).await {
        Ok(Ok(s)) => Some(s.clone()),
        Ok(Err(_)) => Some(State::Failed),
        Err(_) => None,
    }
}

/// Sends every unit its stop and waits for them together (each bounded).
async fn stop_units(units: Vec<Unit>) {
    let mut waits = Vec::new();
    for u in units {
        let _ = u.stop_tx.send(true);
        let limit = u.stop_timeout + STOP_MARGIN;
        waits.push(async move {
            let mut join = u.join;
            if tokio::time::timeout(limit, &mut join).await.is_err() {
                join.abort();
                kmsg::console(&format!(
                    "{} {}: not stopped within {}s; given up",
                    kind_name(u.kind),
                    u.name,
                    limit.as_secs()
                ));
            }
            let restarts = u.restarts.lock().map(|r| *r).unwrap_or(0);
            log::debug!("{} {} had {restarts} restarts", kind_name(u.kind), u.name);
        });
    }
    futures::future::join_all(waits).await;
}

fn spawn_unit(rt: &tokio::runtime::Handle, job: Job) -> Unit {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(State::Starting);
    let restarts = Arc::new(Mutex::new(0));
    let name = job.name.clone();
    let kind = job.kind;
    let stop_timeout = Duration::from_secs(job.container.stop_timeout_s);
    let join = rt.spawn(supervise(job.clone(), state_tx, stop_rx, restarts.clone()));
    Unit {
        name,
        kind,
        job,
        stop_timeout,
        stop_tx,
        state_rx,
        restarts,
        join,
    }
}

/// A client on the daemon's shared connections (`pool`), retrying while containerd is away
/// (restarting); `failed` is the connection the job saw fail. `None` once a stop is asked.
async fn reconnect(
    job: &Job,
    failed: Option<u64>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Borrowed> {
    let pool = Pool::shared(&job.socket, job.namespace);
    loop {
        if *stop.borrow() {
            return None;
        }
        let attempt = async {
            daemon::wait_ready(&job.socket, Duration::from_secs(5))
                .await
                .ok()?;
            pool.borrow(failed).await.ok()
        };
        tokio::select! {
            c = attempt => if let Some(c) = c { return Some(c) },
            _ = stop.changed() => return None,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits for the task's exit status; rides out a containerd restart (the shim keeps the task).
async fn wait_exit(
    job: &Job,
    client: &mut Borrowed,
    stop: &mut watch::Receiver<bool>,
) -> Option<u32> {
    loop {
        match client.wait(&job.name, None).await {
            Ok(exit) => return Some(exit.status),
            Err(e) => {
                log::warn!("{} {}: {e}; reconnecting", kind_name(job.kind), job.name);
                *client = reconnect(job, Some(client.connection()), stop).await?;
                match client.task_status(&job.name).await {
                    Ok(Some(t)) if t.state == TaskState::Stopped => {
                        return Some(t.exit_status.unwrap_or(255))
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return Some(255),
                }
            }
        }
    }
}

/// Brings the job's image into the namespace (import or pull), retrying with the restart
/// backoff until that works or a stop is asked (`None`). Returns the image's name there.
async fn obtain_image(
    what: &str,
    job: &Job,
    client: &Client,
    state: &watch::Sender<State>,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let attempt = async {
            let _one_at_a_time = match &job.source {
                ImageSource::Present => None,
                ImageSource::Archive(_) | ImageSource::Registry(_) => Some(IMAGE_LOCK.lock().await),
            };
            match &job.source {
                ImageSource::Present => Ok(job.image.clone()),
                ImageSource::Archive(path) => client
                    .import_archive(path, None)
                    .await
                    .map(|i| {
                        log::info!(
                            "{what}: {} imported from {} ({} blobs, {} layers)",
                            i.name,
                            path.display(),
                            i.blobs_written,
                            i.layers_unpacked
                        );
                        i.name
                    })
                    .map_err(|e| e.to_string()),
                ImageSource::Registry(registries) => client
                    .pull(&job.image, registries)
                    .await
                    .map(|p| p.name)
                    .map_err(|e| e.to_string()),
            }
        };
        // A stop asked in the middle of a pull ends it.
        let result = tokio::select! {
            r = attempt => r,
            _ = stop.changed() => return None,
        };
        let error = match result {
            Ok(name) => return Some(name),
            Err(e) => e,
        };
        let delay = backoff.delay_after(started.elapsed());
        kmsg::console(&format!(
            "{what}: image {}: {error}; retry {} in {}s",
            job.image,
            backoff.restarts,
            delay.as_secs()
        ));
        // Whatever waits on it (its wave) gives up; the retries go on.
        state.send_if_modified(|s| {
            let never = *s == State::Starting;
            if never {
                *s = State::Failed;
            }
            never
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return None,
        }
    }
}

/// Creates the container (replacing a leftover of the same name).
async fn create(job: &Job, client: &Client) -> Result<Signal, String> {
    let info = client
        .image_info(&job.image)
        .await
        .map_err(|e| e.to_string())?;
    let container = &job.container;
    if container.net_mode(job.kind) == NetMode::Bridge && job.bridge.is_none() {
        return Err("net = \"bridge\": this node has no workload networking (see the log)".into());
    }
    let input = spec::SpecInput {
        name: &job.name,
        kind: job.kind,
        container,
        image: &info.config,
        cgroups_path: job.cgroups_path.clone(),
        bridge: job.bridge.as_ref().map(|b| b.paths(&job.name)),
    };
    let spec = spec::build(&input).map_err(|e| e.to_string())?;
    client
        .delete_container(&job.name)
        .await
        .map_err(|e| e.to_string())?;
    client
        .create_container(&NewContainer {
            id: &job.name,
            kind: job.kind,
            image: &info,
            spec: &spec,
            labels: BTreeMap::new(),
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(info
        .stop_signal
        .as_deref()
        .and_then(parse_signal)
        .unwrap_or(Signal::SIGTERM))
}

/// One container's life: create, then start a task, wait for its exit, apply the restart
/// policy with backoff, and again; on a stop request, stop the task within `stop_timeout_s`.
async fn supervise(
    job: Job,
    state: watch::Sender<State>,
    mut stop: watch::Receiver<bool>,
    restarts: Arc<Mutex<u32>>,
) {
    let what = format!("{} {}", kind_name(job.kind), job.name);
    let Some(mut client) = reconnect(&job, None, &mut stop).await else {
        return;
    };
    let mut job = job;
    match obtain_image(&what, &job, &client, &state, &mut stop).await {
        Some(name) => job.image = name,
        None => return,
    }
    let Ok(slot) = start_slot(&mut stop).await else {
        return;
    };
    let created = create(&job, &client).await;
    drop(slot);
    let stop_signal = match created {
        Ok(s) => s,
        Err(e) => {
            kmsg::console(&format!("{what}: not started: {e}"));
            let _ = state.send(State::Failed);
            return;
        }
    };
    let sink = match LogSink::new(Path::new(LOG_DIR), &job.name, Rotation::default()) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("{what}: log: {e}");
            None
        }
    };
    let note = |line: &str| {
        if let Some(s) = &sink {
            let _ = s.note(Stream::Stderr, line);
        }
    };
    let mut backoff = Backoff::default();
    loop {
        let Ok(slot) = start_slot(&mut stop).await else {
            return;
        };
        let logs = sink.as_ref().and_then(|s| {
            s.attach(Path::new(IO_DIR))
                .map_err(|e| log::error!("{what}: log: {e}"))
                .ok()
        });
        let started = Instant::now();
        let network = attach(&what, &job).await;
        // A failed attach undid itself: nothing to detach then.
        let attached = network.is_ok();
        let start = match network {
            Ok(()) => client
                .start_task(&job.name, logs.as_ref())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        drop(slot);
        let status = match start {
            Ok(pid) => {
                kmsg::console(&format!("{what} started (pid {pid})"));
                note(&format!("ros: started (pid {pid})"));
                if !job.container.oneshot {
                    let _ = state.send(State::Running { pid });
                }
                let mut stop_seen = stop.clone();
                let waited = tokio::select! {
                    s = wait_exit(&job, &mut client, &mut stop_seen) => s,
                    _ = stop.changed() => None,
                };
                match waited {
                    Some(s) => s,
                    None => {
                        stop_task(&what, &job, &client, stop_signal).await;
                        detach(&what, &job).await;
                        if let Some(l) = logs {
                            tokio::spawn(l.finished());
                        }
                        return;
                    }
                }
            }
            Err(e) => {
                kmsg::console(&format!("{what}: start failed: {e}"));
                // Never started: what waits on it (its wave) gives up; later restarts go on.
                state.send_if_modified(|s| {
                    let never = *s == State::Starting;
                    if never {
                        *s = State::Failed;
                    }
                    never
                });
                255
            }
        };
        let _ = client.delete_task(&job.name).await;
        // Released before the restart decision: the address and the published ports belong to
        // the task that ended (a restart attaches afresh).
        if attached {
            detach(&what, &job).await;
        }
        if let Some(l) = logs {
            tokio::spawn(l.finished());
        }
        let ended = if status == 0 {
            Ended::Success
        } else {
            Ended::Failure
        };
        if !policy::wants_restart(job.container.restart, job.container.oneshot, ended) {
            kmsg::console(&format!("{what} exited (status {status}); not restarted"));
            note(&format!("ros: exited (status {status}); not restarted"));
            let _ = state.send(State::Done { ok: status == 0 });
            return;
        }
        let delay = backoff.delay_after(started.elapsed());
        if let Ok(mut r) = restarts.lock() {
            *r = backoff.restarts;
        }
        let line = format!(
            "{what} exited (status {status}); restart {} in {}s",
            backoff.restarts,
            delay.as_secs()
        );
        kmsg::console(&line);
        note(&format!("ros: {line}"));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {
                kmsg::console(&format!("{what} stopped (was waiting to restart)"));
                return;
            }
        }
    }
}

/// Attaches a bridge container's network before its task starts (nothing for the others) and
/// puts the outcome on the console (`ros: workload web: network 10.88.0.2/16 on ros0 … in
/// 0.210s`). The error is the start's failure.
async fn attach(what: &str, job: &Job) -> Result<(), String> {
    let Some(bridge) = &job.bridge else {
        return Ok(());
    };
    let started = Instant::now();
    match bridge.attach(&job.name, &job.container.ports).await {
        Ok(a) => {
            let ports: Vec<String> = a.ports.iter().map(|p| p.to_string()).collect();
            kmsg::console(&format!(
                "{what}: network {} on {}{} in {:.3}s",
                a.address,
                crate::net::cni::BRIDGE,
                if ports.is_empty() {
                    String::new()
                } else {
                    format!(", ports {}", ports.join(" "))
                },
                started.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Err(e) => Err(format!("network: {e}")),
    }
}

/// Detaches a bridge container's network after its task ended (nothing for the others);
/// a failure is logged on the console (the driver retries leftovers at the next attach).
async fn detach(what: &str, job: &Job) {
    let Some(bridge) = &job.bridge else {
        return;
    };
    let started = Instant::now();
    match bridge.detach(&job.name).await {
        Ok(()) => log::info!(
            "{what}: network detached in {:.3}s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => kmsg::console(&format!("{what}: network detach: {e}")),
    }
}

async fn stop_task(what: &str, job: &Job, client: &Client, signal: Signal) {
    let timeout = Duration::from_secs(job.container.stop_timeout_s);
    match client.stop(&job.name, signal, timeout).await {
        Ok(exit) => kmsg::console(&format!("{what} stopped (status {})", exit.status)),
        Err(e) => kmsg::console(&format!("{what}: stop: {e}")),
    }
    let _ = client.delete_task(&job.name).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_only_bridge_workloads_carry_the_network_driver() {
        let b = BridgeNet::with_starter(
            Box::new(|| Err(crate::net::cni::CniError::Module("none".into()))),
            Path::new("/run/ros/resolv"),
            Path::new("/run/ros/netns"),
        );
        let default = Container::default();
        let none = Container {
            net: Some(NetMode::None),
            ..Container::default()
        };
        assert!(job_bridge(Some(&b), Kind::Workload, &default).is_some());
        assert!(job_bridge(Some(&b), Kind::Workload, &none).is_none());
        assert!(job_bridge(Some(&b), Kind::Service, &default).is_none());
        assert!(job_bridge(None, Kind::Workload, &default).is_none());
    }

    #[test]
    fn test_workload_images_resolve_to_archive_or_registry() {
        let regs = Arc::new(BTreeMap::from([(
            "10.0.2.100:5000".to_owned(),
            Registry {
                insecure: true,
                ..Registry::default()
            },
        )]));
        match workload_source("oci-archive:/var/lib/x.oci.tar", &regs) {
            Err(ImageSource::Archive(p)) => assert_eq!(p, Path::new("/var/lib/x.oci.tar")),
            other => panic!("{other:?}"),
        }
        match workload_source("10.0.2.100:5000/app:1", &regs) {
            Err(ImageSource::Registry(r)) => assert!(r["10.0.2.100:5000"].insecure),
            other => panic!("{other:?}"),
        }
    }
}
