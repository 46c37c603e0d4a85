//! How each system under test is booted and asked for its numbers: the QEMU options, when it
//! counts as ready, where its boot milestones are read from, and the guest commands behind the
//! latency rows.
//!
//! Owns every guest command line the benchmark types. It must not aggregate or print results
//! (that is `report`), and it never sends traffic anywhere but into the VM it booted.

use crate::probe;
use crate::report::System;
use ros_tests::{repo_root, Vm, VmOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The small image both systems import and run (ros bundles it as its syslog service; the
/// baseline has it at /opt/bench/small.oci.tar).
pub const IMAGE: &str = "docker.io/ros/syslog:0.1.0";
/// The OCI annotation that puts containers in one shim (containerd's runc v2 shim grouping).
const SHIM_GROUP: &str = "io.containerd.runc.v2.group";
/// What every benchmark container runs.
const SLEEP: &str = "/bin/busybox sleep 2147483647";
/// A benchmark workload on ros, as `key = value` pairs (the same container as [`SLEEP`] from
/// the bundled image), for both the inline table of `ros config set` and the config file.
const WORKLOAD: &[(&str, &str)] = &[
    ("image", "\"ros/syslog\""),
    ("entrypoint", "[]"),
    ("command", "[\"/bin/busybox\", \"sleep\", \"2147483647\"]"),
    ("net", "\"none\""),
    ("stop_timeout_s", "1"),
];

/// [`WORKLOAD`]'s pairs joined by `sep`.
fn workload_fields(sep: &str) -> String {
    let fields: Vec<String> = WORKLOAD.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    fields.join(sep)
}
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{0}")]
    Vm(#[from] ros_tests::VmError),
    #[error("{path}: missing ({hint})")]
    MissingInput { path: PathBuf, hint: &'static str },
    #[error("{system}: {what}: {source}")]
    Io {
        system: &'static str,
        what: String,
        source: std::io::Error,
    },
    #[error("{system}: no `{what}` in the guest's output:\n{output}")]
    NotFound {
        system: &'static str,
        what: String,
        output: String,
    },
    #[error("{system}: {what}")]
    Failed { system: &'static str, what: String },
}

pub type Result<T> = std::result::Result<T, GuestError>;

/// Where the images are.
#[derive(Debug, Clone)]
pub struct Images {
    pub out: PathBuf,
    pub baseline: PathBuf,
    /// How ros boots: the system image on a disk (an install) or inside the initramfs.
    pub ros_layout: RosLayout,
}

/// Where ros's system image (system.erofs) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosLayout {
    /// `initrd-disk.img`, with system.erofs attached as a virtio disk, as on an installed node.
    Disk,
    /// `initrd.img` carrying system.erofs, held in RAM (netboot, `scripts/run`).
    Initramfs,
}

impl Images {
    /// The initramfs ros boots with.
    pub fn ros_initrd(&self) -> PathBuf {
        match self.ros_layout {
            RosLayout::Disk => self.out.join("initrd-disk.img"),
            RosLayout::Initramfs => self.out.join("initrd.img"),
        }
    }
}

impl Default for Images {
    fn default() -> Self {
        let root = repo_root();
        Images {
            out: root.join("build/out"),
            baseline: root.join("build/bench/baseline"),
            ros_layout: RosLayout::Disk,
        }
    }
}

fn require(path: PathBuf, hint: &'static str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        Err(GuestError::MissingInput { path, hint })
    }
}

/// What a booted system is asked to do, beyond booting.
pub struct Booted {
    pub system: System,
    pub vm: Vm,
    /// Host wall time from QEMU start to ready.
    pub wall_ready: Duration,
    /// Keeps the baseline's scratch copy of its disk alive as long as the VM.
    _scratch: Option<tempfile::TempDir>,
}

/// Boots `system` with the shared machine shape and waits until it is ready. `ros_config` is
/// the ros node's os-config.toml (None: the image's defaults).
pub fn boot(
    system: System,
    name: &str,
    images: &Images,
    accel: &str,
    ros_config: Option<&Path>,
) -> Result<Booted> {
    let out = &images.out;
    let kernel = require(out.join("vmlinuz"), "run `cargo xtask build`")?;
    let mut opts = VmOptions {
        kernel,
        accel: accel.into(),
        ..Default::default()
    };
    let mut scratch = None;
    match system {
        System::Ros => {
            opts.initrd = require(images.ros_initrd(), "run `cargo xtask build`")?;
            opts.config = ros_config.map(Path::to_path_buf);
            if images.ros_layout == RosLayout::Disk {
                let image = require(out.join("system.erofs"), "run `cargo xtask build`")?;
                let (dir, disk) = scratch_copy(system, &image)?;
                opts.disks = vec![disk];
                scratch = Some(dir);
            }
        }
        System::Baseline => {
            let b = &images.baseline;
            opts.initrd = require(b.join("initrd.img"), "run `cargo xtask baseline`")?;
            let image = require(b.join("rootfs.img"), "run `cargo xtask baseline`")?;
            let (dir, disk) = scratch_copy(system, &image)?;
            opts.disks = vec![disk];
            opts.debug_shell = false;
            opts.append = vec![
                "root=/dev/vda".into(),
                "ro".into(),
                "systemd.debug_shell=ttyS1".into(),
            ];
            scratch = Some(dir);
        }
    }
    let started = Instant::now();
    let mut vm = Vm::boot(name, &opts)?;
    match system {
        System::Ros => {
            vm.wait_ready(BOOT_TIMEOUT)?;
        }
        System::Baseline => {
            // QEMU has made the debug shell's socket by the time the kernel prints anything.
            vm.wait_for_console("Linux version", BOOT_TIMEOUT)?;
            let (_, state) = vm.exec("systemctl is-system-running --wait", BOOT_TIMEOUT)?;
            if state.trim() != "running" {
                let failed = vm
                    .exec("systemctl --failed --no-legend", Duration::from_secs(60))
                    .map(|(_, o)| o)
                    .unwrap_or_default();
                return Err(GuestError::Failed {
                    system: system.name(),
                    what: format!("boot ended `{}`; failed units:\n{failed}", state.trim()),
                });
            }
        }
    }
    Ok(Booted {
        system,
        vm,
        wall_ready: started.elapsed(),
        _scratch: scratch,
    })
}

/// Every boot starts from the pristine disk (and no two VMs share a writable file): a sparse
/// copy in a scratch directory that lives as long as the VM.
fn scratch_copy(system: System, image: &Path) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("ros-bench-")
        .tempdir()
        .map_err(|source| io(system, "scratch dir", source))?;
    let name = image.file_name().unwrap_or_default();
    let disk = dir.path().join(name);
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&disk)
        .status()
        .map_err(|source| io(system, &format!("cp {}", image.display()), source))?;
    if !st.success() {
        return Err(GuestError::Failed {
            system: system.name(),
            what: format!("copying {} failed ({st})", image.display()),
        });
    }
    Ok((dir, disk))
}

fn io(system: System, what: &str, source: std::io::Error) -> GuestError {
    GuestError::Io {
        system: system.name(),
        what: what.into(),
        source,
    }
}

/// Seconds since kernel start for each boot milestone.
#[derive(Debug, Clone, Copy)]
pub struct Milestones {
    pub userspace: f64,
    pub init: f64,
    pub containerd: f64,
    pub first_container: f64,
    pub ready: f64,
}

/// Memory after ready, KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub pid1: u64,
    pub containerd: u64,
    /// Proportional set size: pages the daemons share (their binary) counted once in all.
    pub containerd_pss: u64,
    pub used: u64,
}

impl Booted {
    fn name(&self) -> &'static str {
        self.system.name()
    }

    fn run(&mut self, cmd: &str) -> Result<String> {
        Ok(self.vm.succeed(cmd)?)
    }

    fn found<T>(&self, v: Option<T>, what: &str, output: &str) -> Result<T> {
        v.ok_or_else(|| GuestError::NotFound {
            system: self.name(),
            what: what.into(),
            output: output.chars().take(4000).collect(),
        })
    }

    pub fn milestones(&mut self) -> Result<Milestones> {
        // Piped: on a tty (the debug shell is one) util-linux dmesg colours its output.
        let dmesg = self.run("dmesg | cat")?;
        let kmsg = |needle: &str| probe::kmsg_time(&dmesg, needle);
        let userspace = self.found(kmsg("Run /init as init process"), "Run /init", &dmesg)?;
        match self.system {
            System::Ros => Ok(Milestones {
                userspace,
                // PID 1's first line (it logs from the start of stage 1).
                init: self.found(kmsg("ros: "), "ros: (first line)", &dmesg)?,
                containerd: self.found(kmsg(" answers after "), "containerd answers", &dmesg)?,
                first_container: self.found(
                    kmsg("ros: service syslog started"),
                    "service syslog started",
                    &dmesg,
                )?,
                ready: self.found(kmsg("ros: ready in"), "ros: ready in", &dmesg)?,
            }),
            System::Baseline => {
                let show = self.run(
                    "systemctl show -p UserspaceTimestampMonotonic -p FinishTimestampMonotonic; \
                     systemctl show containerd -p ActiveEnterTimestampMonotonic | sed s/^/containerd./; \
                     systemctl show bench-first -p ActiveEnterTimestampMonotonic | sed s/^/first./",
                )?;
                let at = |key: &str| probe::systemd_secs(&show, key);
                Ok(Milestones {
                    userspace,
                    init: self.found(
                        at("UserspaceTimestampMonotonic"),
                        "UserspaceTimestampMonotonic",
                        &show,
                    )?,
                    containerd: self.found(
                        at("containerd.ActiveEnterTimestampMonotonic"),
                        "containerd active",
                        &show,
                    )?,
                    first_container: self.found(
                        at("first.ActiveEnterTimestampMonotonic"),
                        "bench-first active",
                        &show,
                    )?,
                    ready: self.found(
                        at("FinishTimestampMonotonic"),
                        "FinishTimestampMonotonic",
                        &show,
                    )?,
                })
            }
        }
    }

    pub fn memory(&mut self) -> Result<Memory> {
        let pid1 = self.run("grep VmRSS /proc/1/status")?;
        // `read` is a builtin: no process per /proc entry to skew what is measured.
        let ctrd = self.run(
            "for d in /proc/[0-9]*; do read -r c < $d/comm 2>/dev/null && \
             [ \"$c\" = containerd ] && grep VmRSS $d/status && grep '^Pss:' $d/smaps_rollup; \
             done; true",
        )?;
        let meminfo = self.run("cat /proc/meminfo")?;
        Ok(Memory {
            pid1: self.found(probe::kib_sum(&pid1, "VmRSS"), "VmRSS of PID 1", &pid1)?,
            containerd: self.found(probe::kib_sum(&ctrd, "VmRSS"), "containerd VmRSS", &ctrd)?,
            containerd_pss: self.found(probe::kib_sum(&ctrd, "Pss"), "containerd Pss", &ctrd)?,
            used: self.found(probe::used_kib(&meminfo), "MemAvailable", &meminfo)?,
        })
    }

    pub fn used_kib(&mut self) -> Result<u64> {
        let meminfo = self.run("cat /proc/meminfo")?;
        self.found(probe::used_kib(&meminfo), "MemAvailable", &meminfo)
    }

    /// How many shims serve the benchmark's workloads (`w…`): the distinct parents of their
    /// tasks' first processes.
    pub fn shim_count(&mut self) -> Result<u64> {
        let out = self.run(
            "ctr -n user task ls | awk 'NR > 1 && $1 ~ /^w/ {print $2}' | \
             while read p; do awk '/^PPid:/ {print $2}' /proc/$p/status; done | sort -u | wc -l",
        )?;
        self.found(out.trim().parse().ok(), "a shim count", &out)
    }

    /// Host-timed run of `cmd` (which must succeed), in ms.
    pub fn timed(&mut self, cmd: &str) -> Result<f64> {
        let t = Instant::now();
        self.run(cmd)?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }

    /// Untimed setup of the sysctl row: a minimal Debian has no /etc/sysctl.d until a
    /// package ships one.
    pub fn prepare_sysctl(&mut self) -> Result<()> {
        if self.system == System::Baseline {
            self.run("mkdir -p /etc/sysctl.d")?;
        }
        Ok(())
    }

    /// A persistent sysctl change, until the kernel shows it: `ros config set` on ros; on the
    /// baseline, a sysctl.d drop-in applied by systemd-sysctl (what applies it at boot, so it
    /// survives a reboot like the ros change does). The binary, not `systemctl restart`: the
    /// unit's start limit (5 in 10 s) refuses a loop of restarts.
    pub fn sysctl_cmd(&self, swappiness: u32) -> String {
        let wait =
            format!("until [ \"$(cat /proc/sys/vm/swappiness)\" = {swappiness} ]; do :; done");
        match self.system {
            System::Ros => {
                format!("ros config set sysctl.vm.swappiness={swappiness} >/dev/null && {wait}")
            }
            System::Baseline => format!(
                "echo 'vm.swappiness = {swappiness}' > /etc/sysctl.d/90-bench.conf && \
                 /usr/lib/systemd/systemd-sysctl && {wait}"
            ),
        }
    }

    /// A workload through ros (`ros config set` returns once it started), waited for until
    /// containerd reports it running.
    pub fn ros_workload_cmd(name: &str) -> String {
        format!(
            "ros config set workloads.{name} '{{ {} }}' >/dev/null && \
             until ctr -n user task ls | grep -q '^{name} .*RUNNING'; do :; done",
            workload_fields(", ")
        )
    }

    pub fn ctr_run_cmd(name: &str) -> String {
        format!("ctr -n user run -d {IMAGE} {name} {SLEEP} >/dev/null")
    }

    /// [`Self::ctr_run_cmd`] in a shim shared with every other container of the group, by the
    /// same runc v2 shim-group annotation ros writes for `shim = "shared"`.
    pub fn ctr_run_shared_cmd(name: &str) -> String {
        format!(
            "ctr -n user run -d --annotation {SHIM_GROUP}=bench {IMAGE} {name} {SLEEP} >/dev/null"
        )
    }

    /// Makes the user namespace hold the image on ros (the baseline's first container did it):
    /// a workload started and waited for, untimed.
    pub fn warm_up(&mut self) -> Result<()> {
        if self.system == System::Ros {
            self.run(&Self::ros_workload_cmd("warm"))?;
        }
        Ok(())
    }

    /// `count` workload containers: ros reads them from its config (`ros_workloads_config`),
    /// the baseline starts them with `ctr`. Waits until all run; returns the seconds it took.
    /// `shared`: all in one shim (ros: the config says so; baseline: `ctr run --annotation`).
    pub fn start_workloads(
        &mut self,
        count: usize,
        shared: bool,
        progress: &dyn Fn(usize),
    ) -> Result<f64> {
        let t = Instant::now();
        if self.system == System::Baseline {
            for i in 0..count {
                let name = format!("w{i:03}");
                self.run(&if shared {
                    Self::ctr_run_shared_cmd(&name)
                } else {
                    Self::ctr_run_cmd(&name)
                })?;
                if (i + 1) % 10 == 0 {
                    progress(i + 1);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60 + 20 * count as u64);
        loop {
            // A node busy starting containers may answer slowly: a generous bound.
            let (_, tasks) = self
                .vm
                .exec("ctr -n user task ls", Duration::from_secs(600))?;
            let running = probe::running_tasks(&tasks);
            if self.system == System::Ros {
                progress(running);
            }
            if running >= count {
                return Ok(t.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                return Err(GuestError::Failed {
                    system: self.name(),
                    what: format!(
                        "{running} of {count} workloads running after {:.0}s",
                        t.elapsed().as_secs_f64()
                    ),
                });
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// Lists the workloads: `ros ps` on ros, `ctr task ls` on the baseline.
    pub fn list_cmd(&self) -> &'static str {
        match self.system {
            System::Ros => "ros ps >/dev/null",
            System::Baseline => "ctr -n user task ls >/dev/null",
        }
    }
}

/// The ros config of the workloads boot: `count` sleeping containers from the bundled image.
/// With `shared`, every one of them says `shim = "shared"`.
pub fn ros_workloads_config(count: usize, shared: bool) -> String {
    let mut fields = workload_fields("\n");
    if shared {
        fields.push_str("\nshim = \"shared\"");
    }
    let mut s = String::from("version = 1\n");
    for i in 0..count {
        s.push_str(&format!("\n[workloads.w{i:03}]\n{fields}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_config_names_each_container() {
        let c = ros_workloads_config(3, false);
        assert!(c.starts_with("version = 1\n"));
        assert_eq!(c.matches("[workloads.w").count(), 3);
        assert!(c.contains("[workloads.w002]\nimage = \"ros/syslog\""));
        assert!(!c.contains("shim"));
        let c = ros_workloads_config(3, true);
        assert_eq!(c.matches("\nshim = \"shared\"\n").count(), 3, "{c}");
        assert!(Booted::ctr_run_shared_cmd("w1")
            .contains("--annotation io.containerd.runc.v2.group=bench "));
    }
}
