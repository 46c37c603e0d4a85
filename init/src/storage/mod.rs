//! Persistent state (DESIGN.md boot step 5, issue 7): the state disk mounted at `/var/lib/ros`
//! (`[storage.state]`) and the extra mounts (`[[storage.mounts]]`). See docs/storage.md.
//!
//! Owns: choosing the state device (by `LABEL=`, `UUID=` or path, waiting up to `wait_s`),
//! formatting it ext4 `LABEL=ROS_STATE` when — and only when — `autoformat = true` and it is
//! provably blank (`probe`: no recognised signature at either end AND its first and last MiB
//! all zero), mounting it, and resolving/mounting the extra mounts in order.
//! Must not: format anything that is not blank (every refusal names the device and what it
//! carries, on the console), or hang: a missing device is waited for at most `wait_s`, then
//! the state lives in RAM (the state disk) or boot stops with an error (a required mount).
//!
//! Processes (mke2fs) run through a [`PluginRunner`]: PID 1 passes its reaper-based runner,
//! which must not be called on the reaping thread (boot runs this on a helper thread).

pub mod device;
pub mod probe;

use crate::config::schema::{Mount, StateDisk};
use crate::net::cni::{Invocation, PluginRunner};
use device::{DeviceSpec, Dirs};
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the state disk is mounted.
pub const STATE_DIR: &str = "/var/lib/ros";
/// The label a formatted state disk gets (and the default `device` looks for).
pub const STATE_LABEL: &str = "ROS_STATE";
/// Logs on the state disk, bind-mounted on `/var/log/ros`.
pub const STATE_LOG_DIR: &str = "/var/lib/ros/log";
/// mke2fs in the system image.
pub const MKE2FS: &str = "/usr/lib/ros/system/usr/sbin/mke2fs";

/// A storage fault; each names the device, path or key.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A `device`/`source` string that is neither `none`, `LABEL=`, `UUID=` nor a path.
    #[error("{key}: {value:?} is not LABEL=…, UUID=…, an absolute path or none")]
    BadSpec {
        /// The config key.
        key: String,
        /// Its value.
        value: String,
    },
    /// Reading a device failed.
    #[error("{key}: cannot read {device}: {source}")]
    Probe {
        /// The config key.
        key: String,
        /// The device.
        device: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// mke2fs failed.
    #[error("storage.state: formatting {device} failed: {reason}")]
    Mkfs {
        /// The device.
        device: PathBuf,
        /// Its exit and stderr, or why it did not run.
        reason: String,
    },
    /// mount(2) failed.
    #[error("{key}: mount {device} ({fstype}) on {target}: {errno}")]
    Mount {
        /// The config key.
        key: String,
        /// The device.
        device: PathBuf,
        /// The filesystem type.
        fstype: String,
        /// The mount point.
        target: PathBuf,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// A mount point could not be created.
    #[error("{key}: create {path}: {source}")]
    Mkdir {
        /// The config key.
        key: String,
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A required extra mount whose source is absent.
    #[error("{key}: source {source_spec} for {target} not found (set optional = true to boot without it)")]
    MissingSource {
        /// The config key.
        key: String,
        /// The source as configured.
        source_spec: String,
        /// The mount point.
        target: String,
    },
    /// No `fstype` given and the source carries no filesystem ros recognises.
    #[error("{key}: cannot tell the filesystem of {device}; set fstype")]
    UnknownFs {
        /// The config key.
        key: String,
        /// The device.
        device: PathBuf,
    },
}

/// What boot does for `/var/lib/ros`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateDecision {
    /// No state disk: state lives in RAM (the tmpfs root); `why` for the log.
    Ram {
        /// Why.
        why: String,
    },
    /// Mount this ext4 device.
    Disk {
        /// The device node.
        device: PathBuf,
        /// Formatted on this boot.
        formatted: bool,
    },
}

/// The device setting in effect: `ros.state=` on the cmdline wins over `[storage.state]`.
pub fn effective_device(state: &StateDisk, cmdline_state: Option<&str>) -> String {
    cmdline_state.unwrap_or(&state.device).to_string()
}

/// Formats `device` ext4 with label ROS_STATE through `runner` (`program` is mke2fs). The
/// caller has proved the device blank: mke2fs is not a guard (with `-q` and stdin closed it
/// overwrites an existing ext4 without asking, measured with e2fsprogs 1.47).
pub fn mkfs(runner: &dyn PluginRunner, program: &Path, device: &Path) -> Result<(), StorageError> {
    let inv = Invocation {
        program: program.to_path_buf(),
        args: vec![
            "-q".into(),
            "-t".into(),
            "ext4".into(),
            "-L".into(),
            STATE_LABEL.into(),
            device.display().to_string(),
        ],
        env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
        stdin: Vec::new(),
        timeout: Duration::from_secs(300),
    };
    match runner.run(&inv) {
        Ok(f) if f.success() => Ok(()),
        Ok(f) => Err(StorageError::Mkfs {
            device: device.to_path_buf(),
            reason: format!("{}: {}", f.exit, f.stderr_text()),
        }),
        Err(e) => Err(StorageError::Mkfs {
            device: device.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn probe_dev(key: &str, device: &Path) -> Result<probe::Probe, StorageError> {
    probe::probe(device).map_err(|source| StorageError::Probe {
        key: key.to_string(),
        device: device.to_path_buf(),
        source,
    })
}

/// Decides (and formats, when allowed and blank) the state device. `console` gets the lines
/// the admin must see (refusals, a format); `format` runs mke2fs.
pub fn choose_state(
    state: &StateDisk,
    cmdline_state: Option<&str>,
    dirs: &Dirs,
    format: &mut dyn FnMut(&Path) -> Result<(), StorageError>,
    console: &mut dyn FnMut(String),
) -> Result<StateDecision, StorageError> {
    const KEY: &str = "storage.state";
    let value = effective_device(state, cmdline_state);
    let spec = DeviceSpec::parse(&value).ok_or_else(|| StorageError::BadSpec {
        key: "storage.state.device".into(),
        value: value.clone(),
    })?;
    if spec == DeviceSpec::None {
        return Ok(StateDecision::Ram {
            why: format!("device = {value:?}"),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(state.wait_s);
    let found = loop {
        let found = match &spec {
            DeviceSpec::Path(p) => {
                let p = device::under(dirs, p);
                p.exists().then_some(p)
            }
            _ => device::find_by(dirs, &spec).map(|(d, _)| d.path),
        };
        if found.is_some() || Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    match (&spec, found) {
        (DeviceSpec::Path(_), Some(dev)) => {
            let p = probe_dev(KEY, &dev)?;
            if p.ext().is_some() {
                return Ok(StateDecision::Disk {
                    device: dev,
                    formatted: false,
                });
            }
            if p.is_blank() && state.autoformat {
                format(&dev)?;
                console(format!(
                    "storage.state: formatted {} ext4 (LABEL={STATE_LABEL})",
                    dev.display()
                ));
                return Ok(StateDecision::Disk {
                    device: dev,
                    formatted: true,
                });
            }
            let why = if p.is_blank() {
                format!("{} is blank and autoformat = false", dev.display())
            } else {
                format!("{} not formatted: {}", dev.display(), p.why_not_blank())
            };
            console(format!("storage.state: {why}; state in RAM"));
            Ok(StateDecision::Ram { why })
        }
        (_, Some(dev)) => Ok(StateDecision::Disk {
            device: dev,
            formatted: false,
        }),
        (DeviceSpec::Label(l), None) if state.autoformat && l == STATE_LABEL => {
            // No disk carries the label: format the first blank whole disk, name the others.
            let mut refused = Vec::new();
            for d in device::list(dirs).into_iter().filter(|d| !d.partition) {
                let p = probe_dev(KEY, &d.path)?;
                if p.is_blank() {
                    format(&d.path)?;
                    console(format!(
                        "storage.state: formatted {} ext4 (LABEL={STATE_LABEL})",
                        d.path.display()
                    ));
                    return Ok(StateDecision::Disk {
                        device: d.path,
                        formatted: true,
                    });
                }
                let line = format!(
                    "storage.state: {} not formatted: {}",
                    d.path.display(),
                    p.why_not_blank()
                );
                console(line);
                refused.push(d.name);
            }
            Ok(StateDecision::Ram {
                why: format!(
                    "no disk with LABEL={l} and no blank disk (refused: {})",
                    if refused.is_empty() {
                        "none".to_string()
                    } else {
                        refused.join(", ")
                    }
                ),
            })
        }
        (_, None) => Ok(StateDecision::Ram {
            why: format!("no device {value} (waited {} s)", state.wait_s),
        }),
    }
}

/// An extra mount, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMount {
    /// `storage.mounts[i]`.
    pub key: String,
    /// The device node (or path, for a bind).
    pub device: PathBuf,
    /// Mount point.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Flags from the options.
    pub flags: MsFlags,
    /// The options that are not flags, comma-joined.
    pub data: String,
}

/// Splits mount options into flags and filesystem data.
pub fn options(opts: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in opts.iter().flat_map(|o| o.split(',')) {
        match o.trim() {
            "" | "defaults" | "rw" => {}
            "ro" => flags |= MsFlags::MS_RDONLY,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "bind" => flags |= MsFlags::MS_BIND,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// Resolves `[[storage.mounts]]` in order, waiting up to `wait` for each absent source. A
/// missing optional one is a warning (to `warn`), a missing required one an error.
pub fn resolve_mounts(
    mounts: &[Mount],
    dirs: &Dirs,
    wait: Duration,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<ResolvedMount>, StorageError> {
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let key = format!("storage.mounts[{i}]");
        let spec = DeviceSpec::parse(&m.source).ok_or_else(|| StorageError::BadSpec {
            key: format!("{key}.source"),
            value: m.source.clone(),
        })?;
        let deadline = Instant::now() + wait;
        let found = loop {
            let found = match &spec {
                DeviceSpec::Path(p) => {
                    let p = device::under(dirs, p);
                    p.exists().then_some(p)
                }
                s => device::resolve(dirs, s),
            };
            if found.is_some() || Instant::now() >= deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let Some(device) = found else {
            let missing = StorageError::MissingSource {
                key: key.clone(),
                source_spec: m.source.clone(),
                target: m.target.clone(),
            };
            if m.optional {
                warn(format!("{missing}; optional, skipped"));
                continue;
            }
            return Err(missing);
        };
        let (flags, data) = options(&m.options);
        let fstype = match &m.fstype {
            Some(t) => t.clone(),
            None if flags.contains(MsFlags::MS_BIND) || device.is_dir() => "none".to_string(),
            None => {
                let p = probe_dev(&key, &device)?;
                let t = p.findings.iter().find_map(|f| match f {
                    probe::Finding::Ext { fstype, .. } => Some(*fstype),
                    probe::Finding::Filesystem(t) => Some(*t),
                    _ => None,
                });
                match t {
                    Some(t) => t.to_string(),
                    None => return Err(StorageError::UnknownFs { key, device }),
                }
            }
        };
        out.push(ResolvedMount {
            key,
            device,
            target: PathBuf::from(&m.target),
            fstype,
            flags,
            data,
        });
    }
    Ok(out)
}

/// Mounts one filesystem (creating the mount point).
pub fn mount(
    key: &str,
    device: &Path,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> Result<(), StorageError> {
    std::fs::create_dir_all(target).map_err(|source| StorageError::Mkdir {
        key: key.to_string(),
        path: target.to_path_buf(),
        source,
    })?;
    nix::mount::mount(
        Some(device),
        target,
        Some(fstype),
        flags,
        (!data.is_empty()).then_some(data),
    )
    .map_err(|errno| StorageError::Mount {
        key: key.to_string(),
        device: device.to_path_buf(),
        fstype: fstype.to_string(),
        target: target.to_path_buf(),
        errno,
    })
}

#[cfg(test)]
mod tests;
