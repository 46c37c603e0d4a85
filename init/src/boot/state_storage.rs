//! Boot's side of persistent state (DESIGN.md boot steps 5–6, docs/storage.md): the `storage`
//! phase (take `[storage.state]` from the layers that do not live on the state disk, find,
//! format if allowed and blank, and mount the state disk at `/var/lib/ros`, with the logs'
//! directory on it bind-mounted on `/var/log/ros`), the extra mounts of the `kernel` phase,
//! and the boot state machine of the config generations (roll back a generation whose boot
//! never reached `ready`; a watchdog that reboots when `ready` does not come within
//! `storage.boot_timeout_s`).
//!
//! Processes: mke2fs runs through the reaper on a helper thread while the calling (reaping)
//! thread keeps reaping and delivering waiter exits, as the serve loop does later.
//! Must not: fail boot for the state disk (a disk that cannot be used leaves the state in
//! RAM, with the reason on the console); only a required extra mount stops boot.

use super::cmdline::Cmdline;
use super::{config_sources, kmsg, sysimage};
use crate::config::generations::{GenState, Store};
use crate::config::Config;
use crate::net::cni::ReaperRunner;
use crate::storage::device::Dirs;
use crate::storage::{self, StateDecision, StorageError};
use crate::supervisor::fleet;
use crate::supervisor::reaper::{Reaped, Reaper};
use crate::supervisor::Owner;
use nix::mount::MsFlags;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set once the node reached `ready`; the watchdog reads it.
static READY: AtomicBool = AtomicBool::new(false);

/// The `storage` phase. Mounts the system image first (mke2fs lives there) and returns it for
/// the `runtime` phase, with whether the state is on disk. `reap` handles what the reaper
/// collects meanwhile (shells, waiter exits).
pub fn setup(
    cmdline: &Cmdline,
    reaper: &Arc<Reaper<Owner>>,
    reap: &mut dyn FnMut(Vec<Reaped<Owner>>),
) -> (Result<sysimage::Mounted, sysimage::SysImageError>, bool) {
    let image = sysimage::mount();
    // [storage.state] from the layers that do not live on the state disk.
    let pre = crate::config::load(config_sources::inputs(cmdline)).config;
    let state = pre.storage.state.clone();
    let cmdline_state = cmdline.state.clone();
    let runner = ReaperRunner::new(Arc::clone(reaper));
    let worker = std::thread::Builder::new()
        .name("ros-storage".into())
        .spawn(move || {
            let mut lines = Vec::new();
            let decision = storage::choose_state(
                &state,
                cmdline_state.as_deref(),
                &Dirs::default(),
                &mut |dev| storage::mkfs(&runner, Path::new(storage::MKE2FS), dev),
                &mut |l| lines.push(l),
            );
            (decision, lines)
        });
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            log::error!("storage: cannot start its thread: {e}; state in RAM");
            return (image, false);
        }
    };
    while !worker.is_finished() {
        reap(reaper.reap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (decision, lines) = match worker.join() {
        Ok(r) => r,
        Err(_) => {
            log::error!("storage: its thread panicked; state in RAM");
            return (image, false);
        }
    };
    for l in lines {
        kmsg::console(&l);
    }
    let on_disk = match decision {
        Ok(StateDecision::Disk { device, .. }) => mount_state(&device),
        Ok(StateDecision::Ram { why }) => {
            log::info!("storage.state: state in RAM: {why}");
            false
        }
        Err(e) => {
            kmsg::console(&format!("{e}; state in RAM"));
            false
        }
    };
    (image, on_disk)
}

/// Mounts the state disk and the logs' directory on it; false (on the console) when it fails.
fn mount_state(device: &Path) -> bool {
    let target = Path::new(storage::STATE_DIR);
    if let Err(e) = storage::mount(
        "storage.state",
        device,
        target,
        "ext4",
        MsFlags::empty(),
        "",
    ) {
        kmsg::console(&format!("{e}; state in RAM"));
        return false;
    }
    kmsg::console(&format!(
        "storage.state: {} mounted at {}",
        device.display(),
        storage::STATE_DIR
    ));
    let logs = Path::new(storage::STATE_LOG_DIR);
    let bound = std::fs::create_dir_all(logs)
        .map_err(|e| format!("{}: {e}", logs.display()))
        .and_then(|()| {
            storage::mount(
                "storage.state",
                logs,
                Path::new(fleet::LOG_DIR),
                "none",
                MsFlags::MS_BIND,
                "",
            )
            .map_err(|e| e.to_string())
        });
    if let Err(e) = bound {
        log::error!("storage: logs on the state disk: {e}; logs in RAM");
    }
    true
}

/// The `[[storage.mounts]]` of the effective config, in order. A missing required source is a
/// boot error (the recovery shell shows it); an optional one is a warning.
pub fn mount_extra(config: &Config) -> Result<(), StorageError> {
    let wait = Duration::from_secs(config.storage.state.wait_s);
    let resolved =
        storage::resolve_mounts(&config.storage.mounts, &Dirs::default(), wait, &mut |w| {
            kmsg::console(&w)
        })?;
    for m in resolved {
        storage::mount(&m.key, &m.device, &m.target, &m.fstype, m.flags, &m.data)?;
        log::info!(
            "{}: {} ({}) mounted at {}",
            m.key,
            m.device.display(),
            m.fstype,
            m.target.display()
        );
    }
    Ok(())
}

/// Marks bad the generation the previous boot tried and never brought to `ready`, with the
/// console line of DESIGN.md.
pub fn roll_back_failed_boot(store: &mut Store) {
    match store.roll_back_failed_boot() {
        Ok(Some((failed, now))) => kmsg::console(&format!(
            "config generation {failed} did not reach ready; using {}",
            now.map_or("no local layer".to_string(), |n| format!("generation {n}"))
        )),
        Ok(None) => {}
        Err(e) => log::error!("{e}"),
    }
}

/// When this boot tries a `trying` generation: records it, and starts the watchdog that
/// reboots (so the next boot rolls back) unless `ready` comes within `boot_timeout_s`.
pub fn arm_watchdog(store: &Store, config: &Config) {
    let Some(gen) = store.boot_generation() else {
        return;
    };
    if gen.meta.state != GenState::Trying {
        return;
    }
    let number = gen.number;
    if let Err(e) = store.mark_booting(number) {
        return log::error!("{e}; no boot watchdog");
    }
    let timeout = Duration::from_secs(config.storage.boot_timeout_s);
    let spawned = std::thread::Builder::new()
        .name("ros-boot-watchdog".into())
        .spawn(move || {
            std::thread::sleep(timeout);
            if READY.load(Ordering::SeqCst) {
                return;
            }
            kmsg::console(&format!(
                "config generation {number} did not reach ready in {} s; rebooting",
                timeout.as_secs()
            ));
            nix::unistd::sync();
            let _ = nix::mount::mount(
                None::<&str>,
                storage::STATE_DIR,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        });
    if let Err(e) = spawned {
        log::error!("boot watchdog: {e}");
    }
}

/// `ready`: stops the watchdog and marks the boot generation good (before the API starts, so
/// a node whose API cannot start does not roll back a working generation).
pub fn reached_ready(store: Option<&mut Store>) {
    READY.store(true, Ordering::SeqCst);
    let Some(store) = store else { return };
    let Some((number, state)) = store.boot_generation().map(|g| (g.number, g.meta.state)) else {
        return;
    };
    if state == GenState::Trying {
        if let Err(e) = store.set_state(number, GenState::Good) {
            log::error!("{e}");
        }
    }
}
