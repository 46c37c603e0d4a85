//! PID 1's sequence: stage 1 in the initramfs (API mounts, switch_root, re-exec), stage 2 in
//! the tmpfs root (mounts, cgroups, cmdline, modules, config, kernel settings, network, runtime —
//! the system image, both containerds and the services —, `ready`, then the workloads in the
//! background), then the serve loop (signals, reaping, shells, containerd restarts). A boot
//! error or a panic ends in the recovery shell.
//!
//! The network runs in its own tokio runtime (background threads, started in the `network`
//! phase, kept until `reboot(2)` so DHCP renewals go on); the serve loop, the signalfd and the
//! one reaper stay in the main thread.
//!
//! Owns the phase order and the console lines `ros: phase NAME X.XXXs`, `ros: ready in X.XXXs`,
//! `ros: config error: …`, `ros: recovery shell: …`. It never returns, never exits and never
//! unwraps: PID 1 dying is a kernel panic.

use super::api_host::{self, ApiHost};
use super::cmdline::{self, Cmdline};
use super::mounts::{self, MountError};
use super::switch_root::{self, SwitchRootError};
use super::sys::LinuxSys;
use super::{config_sources, kmsg, modules, state_storage, sysimage};
use crate::cgroups;
use crate::config::generations::Store;
use crate::config::schema::NetworkWait;
use crate::config::{Config, LayerInput};
use crate::net::cni::{netns, ReaperRunner};
use crate::net::{self, NetService};
use crate::power::{self, PowerAction};
use crate::runtime::daemon::Instance;
use crate::storage::StorageError;
use crate::supervisor::bridge_net::BridgeNet;
use crate::supervisor::daemons::Daemons;
use crate::supervisor::fleet::{self, Fleet};
use crate::supervisor::reaper::{Reaped, Reaper};
use crate::supervisor::{shell, waiters, Owner};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fault that stops boot; the recovery shell shows it.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    SwitchRoot(#[from] SwitchRootError),
    #[error("signal setup: {0}")]
    Signals(nix::errno::Errno),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Modules that the config sources and the state disk need before the config is read.
const BOOT_MODULES: &[&str] = &["qemu_fw_cfg", "virtio_blk", "virtio_net"];

/// Signals PID 1 takes through its signalfd.
const SIGNALS: &[Signal] = &[
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPWR,
    Signal::SIGHUP,
];

/// Entry point when running as PID 1. Never returns.
pub fn main() -> ! {
    kmsg::init(false);
    std::panic::set_hook(Box::new(|info| log::error!("panic: {info}")));
    let reason = match std::panic::catch_unwind(run) {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(never)) => match never {},
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned());
            format!("panic: {}", msg.unwrap_or_else(|| "unknown".into()))
        }
    };
    recovery(&reason)
}

/// Runs `f`, then prints `ros: phase NAME X.XXXs` (seconds since kernel start).
fn phase<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let r = f();
    kmsg::console(&format!("phase {name} {:.3}s", kmsg::uptime()));
    r
}

fn run() -> Result<Infallible, BootError> {
    // Stage 1: the API filesystems, then leave the initramfs (re-exec; returns only on error).
    mounts::mount_missing(&LinuxSys, &mounts::minimal_plan(), &mounts::current())?;
    kmsg::reopen();
    let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
    let mounted = mounts::current();
    if switch_root::root_is_initramfs(&mounted) {
        match switch_root::switch_to_tmpfs(&mounted)? {}
    }

    // Stage 2, in the tmpfs root.
    let signals = Signals::block()?;
    // Shared with the CNI driver's runner (workload networking), which spawns through it.
    let reaper: Arc<Reaper<Owner>> = Arc::new(Reaper::default());
    // This thread reaps (in `serve`): helpers spawned for waiters must run elsewhere.
    waiters::mark_reaping_thread();
    phase("mounts", || {
        mounts::mount_missing(&LinuxSys, &mounts::early_plan(), &mounts::current())
    })?;
    // Before any child exists, so the shells and everything else PID 1 forks start in
    // /ros/init with it.
    init_cgroups();
    let cmdline = phase("cmdline", || {
        let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        cmdline::parse(&text)
    });
    let mut shells = Shells::new(&cmdline.debug_shells);
    shells.respawn_due(&reaper);
    phase("modules", load_boot_modules);
    let (image, on_disk) = phase("storage", || {
        state_storage::setup(&cmdline, &reaper, &mut |reaped| {
            handle_reaped(reaped, &mut shells, None)
        })
    });
    let (config, inputs, mut store) = phase("config", || load_config(&cmdline, on_disk));
    phase("kernel", || -> Result<(), BootError> {
        apply_kernel(&config);
        state_storage::mount_extra(&config)?;
        Ok(())
    })?;
    let network = phase("network", || start_network(&config));
    let mut runtime = phase("runtime", || start_runtime(&config, &reaper, image));
    kmsg::console(&format!("ready in {:.3}s", kmsg::uptime()));
    state_storage::reached_ready(store.as_mut());
    if let Some(rt) = runtime.as_mut() {
        rt.fleet.start_workloads(&config);
    }
    let api = store.and_then(|s| api_host::start(s, &inputs, &config));
    let mut served = Served {
        network,
        runtime,
        api,
        wait: (
            config.network.wait,
            Duration::from_secs(config.network.wait_timeout_s),
        ),
    };
    serve(&signals, &reaper, &mut shells, &mut served)
}

/// What the serve loop looks after besides shells and signals (all absent in recovery).
#[derive(Default)]
struct Served {
    network: Option<Arc<NetService>>,
    runtime: Option<Runtime>,
    api: Option<ApiHost>,
    /// `network.wait` and its timeout, for live network changes.
    wait: (NetworkWait, Duration),
}

/// The cgroup layout (cgroups.rs), with PID 1 moved into its leaf `/ros/init`. A failure
/// costs the fences, not the boot: logged.
fn init_cgroups() {
    let root = Path::new(cgroups::ROOT);
    if let Err(e) = cgroups::create_layout(root) {
        return log::error!("cgroups: {e}");
    }
    if let Err(e) = cgroups::enter(root, cgroups::INIT, std::process::id() as i32) {
        log::error!("cgroups: {e}");
    }
}

/// What runs containers: the two containerd daemons and the fleet of containers.
struct Runtime {
    fleet: Fleet,
    daemons: Daemons,
}

/// The `runtime` phase: mounts the system image, applies the fence's limits, starts both
/// containerds, imports the bundled images and starts the services (DESIGN.md step 8). The
/// fleet gets workload networking (`BridgeNet`, started with the first bridge workload, after
/// `ready`); the workloads' namespace directory is made a shared mount first, so the user
/// containerd's mount namespace sees the namespaces mounted there later.
/// Nothing here is fatal: a node whose containers cannot run still boots, with the error in
/// the log, so the admin can reach it (the debug shell, later the API) and fix the config;
/// `None` when containerd cannot run at all.
fn start_runtime(
    config: &Config,
    reaper: &Arc<Reaper<Owner>>,
    image: Result<sysimage::Mounted, sysimage::SysImageError>,
) -> Option<Runtime> {
    match image {
        // Found on a disk by its UUID: which disk is worth a console line.
        Ok(m) if m.uuid.is_some() => kmsg::console(&m.to_string()),
        Ok(m) => log::info!("{m}"),
        Err(e) => {
            log::error!("{e}; no containers on this boot");
            return None;
        }
    }
    if let Err(e) = cgroups::apply_limits(
        Path::new(cgroups::ROOT),
        &config.limits.user,
        Path::new("/proc/meminfo"),
    ) {
        log::error!("cgroups: {e}");
    }
    if let Err(e) = std::fs::create_dir_all(fleet::LOG_DIR) {
        log::error!("{}: {e}", fleet::LOG_DIR);
    }
    let mut fleet = match Fleet::new() {
        Ok(f) => f,
        Err(e) => {
            log::error!("container runtime: {e}");
            return None;
        }
    };
    if let Err(e) = netns::share_dir(Path::new(netns::NETNS_DIR)) {
        log::error!("workload networking: {e}; bridge workloads cannot start");
    } else {
        fleet.set_bridge(BridgeNet::new(
            config.network.workloads.clone(),
            Arc::new(ReaperRunner::new(reaper.clone())),
        ));
    }
    let mut daemons = Daemons::default();
    for instance in [Instance::system(), Instance::user()] {
        daemons.add(reaper, instance);
    }
    let system = Instance::system();
    if fleet.wait_daemon(&system) {
        fleet.import_bundled(&system, config);
        fleet.start_services(config);
    }
    fleet.wait_daemon(&Instance::user());
    Some(Runtime { fleet, daemons })
}

fn load_boot_modules() {
    let dir = modules::module_dir();
    let db = match modules::ModuleDb::load(&dir) {
        Ok(db) => db,
        Err(e) => return log::warn!("{e}"),
    };
    for name in BOOT_MODULES {
        // Absent hardware (no fw_cfg on bare metal) is normal: ENODEV and friends are not errors.
        match modules::load(&db, &dir, name) {
            Ok(_) => log::debug!("module {name} loaded"),
            Err(e) => log::info!("{e}"),
        }
    }
}

/// The effective config, boot's inputs without the local layer (for the API), and the
/// generation store whose boot generation is the local layer. With the state on disk, a
/// generation that did not reach `ready` on the previous boot is marked bad first, and the
/// boot watchdog is armed while a `trying` generation is being booted.
fn load_config(cmdline: &Cmdline, on_disk: bool) -> (Config, Vec<LayerInput>, Option<Store>) {
    let mut store = api_host::open_store();
    if on_disk {
        if let Some(s) = store.as_mut() {
            state_storage::roll_back_failed_boot(s);
        }
    }
    let inputs = config_sources::inputs(cmdline);
    let loaded = crate::config::load(api_host::with_local(&inputs, store.as_ref()));
    for e in &loaded.errors {
        kmsg::console(&format!("config error: {e}"));
        log::warn!("config layer {} skipped", e.source_name());
    }
    log::info!("config layers: {}", loaded.used.join(", "));
    if on_disk {
        if let Some(s) = store.as_mut() {
            state_storage::arm_watchdog(s, &loaded.config);
        }
    }
    (loaded.config, inputs, store)
}

fn apply_kernel(config: &Config) {
    let dir = modules::module_dir();
    if !config.kernel.modules.is_empty() {
        match modules::ModuleDb::load(&dir) {
            Ok(db) => {
                for name in &config.kernel.modules {
                    if let Err(e) = modules::load(&db, &dir, name) {
                        log::error!("kernel.modules: {e}");
                    }
                }
            }
            Err(e) => log::error!("kernel.modules: {e}"),
        }
    }
    let wanted: BTreeMap<String, String> = config.sysctl.clone();
    match ros_sysctl::merged_settings(&wanted) {
        Ok(settings) => {
            for e in ros_sysctl::apply_all(Path::new("/proc/sys"), &settings) {
                log::error!("{e}");
            }
        }
        Err(e) => log::error!("shipped sysctl defaults: {e}"),
    }
    if let Err(e) = nix::unistd::sethostname(&config.hostname) {
        log::error!("hostname {}: {e}", config.hostname);
    }
}

/// Brings the network up (lo, then every interface in parallel) and waits as `network.wait`
/// says, at most `network.wait_timeout_s`; a timeout is a warning, never a hang. `None` when the
/// network could not start at all (logged); boot goes on.
fn start_network(config: &Config) -> Option<Arc<NetService>> {
    let service = match NetService::start(net::Settings::from_config(config)) {
        Ok(s) => s,
        Err(e) => {
            log::error!("network: {e}");
            return None;
        }
    };
    for e in service.network().config_errors() {
        kmsg::console(&format!("config error: {e}"));
    }
    let timeout = Duration::from_secs(config.network.wait_timeout_s);
    let outcome = service.wait(config.network.wait, timeout);
    match outcome.warning() {
        Some(warning) => log::warn!("{warning}"),
        None => log::info!(
            "network: up in {:.3}s: {}",
            outcome.elapsed.as_secs_f64(),
            outcome.up.join(", ")
        ),
    }
    Some(Arc::new(service))
}

/// PID 1's signals: all blocked, taken one by one from a signalfd in the serve loop.
struct Signals {
    fd: SignalFd,
}

impl Signals {
    fn block() -> Result<Self, BootError> {
        let mut mask = SigSet::empty();
        for s in SIGNALS {
            mask.add(*s);
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(BootError::Signals)?;
        // ctrl-alt-del becomes SIGINT to PID 1 instead of an immediate reboot.
        let _ = nix::sys::reboot::set_cad_enabled(false);
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(BootError::Signals)?;
        Ok(Signals { fd })
    }

    /// Waits up to `timeout` (or until `also` is readable) and returns the signals that
    /// arrived.
    fn wait(&self, timeout: Duration, also: Option<BorrowedFd<'_>>) -> Vec<Signal> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = vec![PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        fds.extend(also.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) <= 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                out.push(sig);
            }
        }
        out
    }
}

/// The shells PID 1 keeps running: respawned when they exit, at most once a second.
struct Shells {
    ttys: Vec<String>,
    running: BTreeMap<String, (Pid, Instant)>,
    next_start: BTreeMap<String, Instant>,
}

impl Shells {
    fn new(ttys: &[String]) -> Self {
        let now = Instant::now();
        Shells {
            ttys: ttys.to_vec(),
            running: BTreeMap::new(),
            next_start: ttys.iter().map(|t| (t.clone(), now)).collect(),
        }
    }

    fn respawn_due(&mut self, reaper: &Reaper<Owner>) {
        let now = Instant::now();
        for tty in &self.ttys {
            let due = self.next_start.get(tty).is_some_and(|t| *t <= now);
            if !due || self.running.contains_key(tty) {
                continue;
            }
            self.next_start.remove(tty);
            match shell::spawn_on_tty(reaper, tty, Owner::Shell(tty.clone())) {
                Ok(pid) => {
                    log::info!("shell on /dev/{tty} (pid {pid})");
                    self.running.insert(tty.clone(), (pid, now));
                }
                Err(e) => log::error!("{e}"),
            }
        }
    }

    fn pids(&self) -> Vec<Pid> {
        self.running.values().map(|(pid, _)| *pid).collect()
    }

    fn exited(&mut self, tty: &str) {
        if let Some((_, started)) = self.running.remove(tty) {
            let delay = if started.elapsed() < Duration::from_secs(1) {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            self.next_start
                .insert(tty.to_string(), Instant::now() + delay);
        }
    }
}

fn handle_reaped(
    reaped: Vec<Reaped<Owner>>,
    shells: &mut Shells,
    mut daemons: Option<&mut Daemons>,
) {
    for r in reaped {
        match r.owner {
            Some(Owner::Shell(tty)) => {
                log::info!("shell on /dev/{tty} ended ({})", r.exit);
                shells.exited(&tty);
            }
            Some(Owner::Containerd(name)) => match daemons.as_deref_mut() {
                Some(d) => d.exited(name, r.exit),
                None => log::warn!("containerd {} ended ({})", name.as_str(), r.exit),
            },
            Some(Owner::Waiter(id)) => {
                if !waiters::deliver(id, r.exit) {
                    log::debug!("helper {} ended ({}), nobody waits for it", r.pid, r.exit);
                }
            }
            None => log::debug!("reaped orphan {} ({})", r.pid, r.exit),
        }
    }
}

/// The serve loop: reap, respawn shells, answer the API, and turn power signals (or a power
/// request) into an ordered shutdown.
fn serve(signals: &Signals, reaper: &Reaper<Owner>, shells: &mut Shells, served: &mut Served) -> ! {
    loop {
        let mut actions: Vec<PowerAction> = signals
            .wait(
                Duration::from_millis(500),
                served.api.as_ref().map(ApiHost::fd),
            )
            .into_iter()
            .filter_map(PowerAction::from_signal)
            .collect();
        if let Some(api) = &served.api {
            let fleet = served.runtime.as_ref().map(|r| &r.fleet);
            actions.extend(api.answer(fleet, served.network.as_ref(), served.wait));
        }
        if let Some(action) = actions.first().copied() {
            let pids = shells.pids();
            let network = served.network.clone();
            power::shutdown(
                action,
                &mut || {
                    // Helpers (CNI DEL at shutdown) still get their exits.
                    for r in reaper.reap() {
                        if let Some(Owner::Waiter(id)) = r.owner {
                            waiters::deliver(id, r.exit);
                        }
                    }
                },
                &mut || {
                    if let Some(rt) = served.runtime.as_mut() {
                        // Workloads detach their networks as they stop: their plugins'
                        // exits are delivered meanwhile (only those: containerd's and
                        // the shells' wait for their owners).
                        rt.fleet.shutdown(&mut || {
                            for r in reaper.reap_where(|o| matches!(o, Owner::Waiter(_))) {
                                if let Some(Owner::Waiter(id)) = r.owner {
                                    waiters::deliver(id, r.exit);
                                }
                            }
                        });
                        rt.daemons.stop(reaper);
                    }
                },
                &pids,
                network.as_deref(),
            );
        }
        handle_reaped(
            reaper.reap(),
            shells,
            served.runtime.as_mut().map(|r| &mut r.daemons),
        );
        if let Some(rt) = served.runtime.as_mut() {
            rt.daemons.respawn_due(reaper);
        }
        shells.respawn_due(reaper);
    }
}

/// The console tty (`ttyS0` on QEMU), from the kernel's list of active consoles.
fn console_tty() -> String {
    std::fs::read_to_string("/sys/class/tty/console/active")
        .ok()
        .and_then(|s| s.split_whitespace().last().map(str::to_string))
        .unwrap_or_else(|| "console".to_string())
}

/// The recovery shell: shows the error and the log on the console and keeps a root shell there,
/// while still reaping and honouring power signals. Never returns.
fn recovery(reason: &str) -> ! {
    // Best effort: the fault may have been in these very mounts.
    let _ = mounts::mount_missing(&LinuxSys, &mounts::minimal_plan(), &mounts::current());
    kmsg::reopen();
    kmsg::console(&format!("recovery shell: {reason}"));
    let tty = console_tty();
    if let Ok(mut con) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/{tty}"))
    {
        use std::io::Write;
        let _ = writeln!(con, "\r\n--- ros boot log (most recent last) ---\r");
        for line in kmsg::recent() {
            let _ = writeln!(con, "{line}\r");
        }
        let _ = writeln!(
            con,
            "--- error: {reason} ---\r\nType `poweroff` or `reboot` when done.\r"
        );
    }
    let reaper: Reaper<Owner> = Reaper::default();
    let mut shells = Shells::new(&[tty]);
    match Signals::block() {
        Ok(signals) => {
            shells.respawn_due(&reaper);
            serve(&signals, &reaper, &mut shells, &mut Served::default())
        }
        Err(e) => {
            log::error!("recovery: {e}; shell without signal handling");
            loop {
                handle_reaped(reaper.reap(), &mut shells, None);
                shells.respawn_due(&reaper);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}
