//! The QEMU command line for a ros VM, shared by the tests and `scripts/run`.
//!
//! Owns the machine shape (TCG by default, 2 vCPUs, virtio disks and NICs), the serial wiring
//! (ttyS0 = console on stdio, ttyS1 = debug shell on a unix socket) and the network policy:
//! user networking is `restrict=on` unless `internet` is set, so a guest reaches nothing off the
//! machine.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How to boot a VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Passed to the guest as fw_cfg `opt/ros/os-config.toml`.
    pub config: Option<PathBuf>,
    /// Extra kernel command line words.
    pub append: Vec<String>,
    pub mem_mib: u32,
    pub cpus: u32,
    /// Disk images; the format (qcow2 or raw) is detected.
    pub disks: Vec<PathBuf>,
    /// Disk images attached `readonly=on` after `disks` (the system image of
    /// `initrd-disk.img`).
    pub readonly_disks: Vec<PathBuf>,
    /// QEMU `-nic` specs; empty means one user-mode NIC.
    pub nics: Vec<String>,
    /// Lift `restrict=on` from user networking.
    pub internet: bool,
    /// `tcg` (default: this host's KVM hangs guests) or `kvm`.
    pub accel: String,
    /// Start the debug shell on ttyS1 (`ros.debug_shell=ttyS1`).
    pub debug_shell: bool,
    /// Exit QEMU when the guest reboots (tests), instead of booting again.
    pub no_reboot: bool,
    /// Console on a terminal: QEMU's monitor multiplexed on it (Ctrl-A x quits).
    pub interactive: bool,
    /// Copy the node's own error lines (`ros: config error: …`, `ros: recovery shell: …`) to
    /// stderr as they appear (`scripts/run --exec`, whose stdout is the command's alone).
    pub echo_errors: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        let out = crate::repo_root().join("build/out");
        VmOptions {
            kernel: out.join("vmlinuz"),
            initrd: out.join("initrd.img"),
            config: None,
            append: Vec::new(),
            mem_mib: 1024,
            cpus: 2,
            disks: Vec::new(),
            readonly_disks: Vec::new(),
            nics: Vec::new(),
            internet: false,
            accel: "tcg".into(),
            debug_shell: true,
            no_reboot: true,
            interactive: false,
            echo_errors: false,
        }
    }
}

/// `qcow2` when the file starts with QEMU's qcow magic, else `raw`.
pub fn disk_format(path: &Path) -> &'static str {
    let mut magic = [0u8; 4];
    let ok = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok();
    if ok && magic == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    }
}

/// Completes a `-nic` spec: virtio unless a model is named; `restrict=on` for user networking
/// unless the spec says otherwise or `internet` is set.
pub fn nic_spec(spec: &str, internet: bool) -> String {
    let mut s = spec.to_string();
    if !s.split(',').any(|p| p.starts_with("model=")) {
        s.push_str(",model=virtio-net-pci");
    }
    let is_user = s.split(',').next() == Some("user");
    if is_user && !internet && !s.split(',').any(|p| p.starts_with("restrict=")) {
        s.push_str(",restrict=on");
    }
    s
}

/// The kernel command line.
pub fn kernel_cmdline(opts: &VmOptions) -> String {
    let mut words = vec![
        "console=ttyS0".to_string(),
        "loglevel=6".to_string(),
        "panic=-1".to_string(),
    ];
    if opts.debug_shell {
        words.push("ros.debug_shell=ttyS1".into());
    }
    words.extend(opts.append.iter().cloned());
    words.join(" ")
}

/// The QEMU command; `shell_socket` is where ttyS1 (the debug shell) listens.
pub fn command(opts: &VmOptions, shell_socket: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    // Multi-threaded TCG races the guest kernel's runtime code patching (an `Oops: int3` in
    // patched code, then a panic; seen in ~1 of 7 boots with containerd starting): one TCG
    // thread per VM avoids it, and costs little when the suite runs two VMs on two cores.
    let accel = if opts.accel == "kvm" {
        "kvm"
    } else {
        "tcg,thread=single"
    };
    cmd.args(["-accel", accel, "-display", "none", "-nodefaults"]);
    cmd.args([
        "-cpu",
        "max",
        "-smp",
        &opts.cpus.to_string(),
        "-m",
        &opts.mem_mib.to_string(),
    ]);
    if opts.interactive {
        cmd.args([
            "-chardev",
            "stdio,id=con0,mux=on,signal=off",
            "-serial",
            "chardev:con0",
            "-mon",
            "chardev=con0",
        ]);
    } else {
        cmd.args([
            "-monitor",
            "none",
            "-chardev",
            "stdio,id=con0,signal=off",
            "-serial",
            "chardev:con0",
        ]);
    }
    cmd.arg("-serial").arg(format!(
        "unix:{},server=on,wait=off",
        shell_socket.display()
    ));
    cmd.arg("-kernel")
        .arg(&opts.kernel)
        .arg("-initrd")
        .arg(&opts.initrd);
    cmd.args(["-append", &kernel_cmdline(opts)]);
    if let Some(cfg) = &opts.config {
        cmd.arg("-fw_cfg").arg(format!(
            "name=opt/ros/os-config.toml,file={}",
            cfg.display()
        ));
    }
    for disk in &opts.disks {
        cmd.arg("-drive").arg(format!(
            "file={},format={},if=virtio",
            disk.display(),
            disk_format(disk)
        ));
    }
    for disk in &opts.readonly_disks {
        cmd.arg("-drive").arg(format!(
            "file={},format={},if=virtio,readonly=on",
            disk.display(),
            disk_format(disk)
        ));
    }
    let nics = if opts.nics.is_empty() {
        vec!["user".to_string()]
    } else {
        opts.nics.clone()
    };
    for nic in &nics {
        cmd.args(["-nic", &nic_spec(nic, opts.internet)]);
    }
    if opts.no_reboot {
        cmd.arg("-no-reboot");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_nics_are_virtio_and_restricted_by_default() {
        assert_eq!(
            nic_spec("user", false),
            "user,model=virtio-net-pci,restrict=on"
        );
        assert_eq!(nic_spec("user", true), "user,model=virtio-net-pci");
        assert_eq!(
            nic_spec("user,model=e1000,restrict=off", false),
            "user,model=e1000,restrict=off"
        );
        assert_eq!(
            nic_spec("socket,connect=127.0.0.1:5000", false),
            "socket,connect=127.0.0.1:5000,model=virtio-net-pci"
        );
    }

    #[test]
    fn disk_format_detects_qcow2_magic() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        let r = dir.path().join("r");
        std::fs::write(&r, [0u8; 16]).unwrap();
        assert_eq!(disk_format(&q), "qcow2");
        assert_eq!(disk_format(&r), "raw");
    }

    #[test]
    fn cmdline_has_console_debug_shell_and_extra_words() {
        let o = VmOptions {
            append: vec!["ros.hostname=x".into()],
            ..Default::default()
        };
        assert_eq!(
            kernel_cmdline(&o),
            "console=ttyS0 loglevel=6 panic=-1 ros.debug_shell=ttyS1 ros.hostname=x"
        );
    }
}
