//! `scripts/run` / `cargo xtask run`: boot the built image in QEMU, interactively (console on
//! the terminal) or with `--exec CMD` (boot, wait for ready, run CMD in the debug shell, print
//! its output, power off, exit with CMD's status).
//!
//! Owns only option handling; the QEMU command line and the shell protocol are the VM test
//! driver's (`ros_tests`), so tests and this runner boot exactly the same machine.

use anyhow::{bail, Context};
use clap::Parser;
use ros_tests::{Vm, VmOptions};
use std::path::PathBuf;
use std::time::Duration;

/// Boot ros in QEMU.
#[derive(Debug, Parser)]
#[command(name = "scripts/run")]
struct RunArgs {
    /// os-config.toml passed to the guest by QEMU fw_cfg (opt/ros/os-config.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Extra kernel command line words (repeatable), e.g. --append ros.hostname=n1.
    #[arg(long, value_name = "ARGS")]
    append: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 1024)]
    mem: u32,
    /// A disk image (repeatable); qcow2 or raw, detected.
    #[arg(long, value_name = "FILE")]
    disk: Vec<PathBuf>,
    /// A NIC as QEMU's -nic SPEC (repeatable); virtio and, for user networking, restrict=on are
    /// added unless named. Default: one user-mode NIC.
    #[arg(long, value_name = "SPEC")]
    nic: Vec<String>,
    /// Seconds to wait for ready and for --exec's command (and, interactive, before killing QEMU).
    #[arg(long, value_name = "S")]
    timeout: Option<u64>,
    /// Let user-mode networking reach the outside (drops restrict=on).
    #[arg(long)]
    internet: bool,
    /// Boot, run CMD in the guest's debug shell, print its output, power off, exit with its status.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Accelerator: tcg (default) or kvm.
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "kvm"])]
    accel: String,
    /// Print the guest console on stderr while --exec runs.
    #[arg(long, short)]
    verbose: bool,
}

pub fn main(args: Vec<String>) -> anyhow::Result<()> {
    let args = RunArgs::parse_from(std::iter::once("scripts/run".to_string()).chain(args));
    let mut opts = VmOptions {
        config: args.config.clone(),
        append: args
            .append
            .iter()
            .flat_map(|a| a.split_whitespace().map(str::to_string))
            .collect(),
        mem_mib: args.mem,
        disks: args.disk.clone(),
        nics: args.nic.clone(),
        internet: args.internet,
        accel: args.accel.clone(),
        ..Default::default()
    };
    for f in opts.config.iter().chain(opts.disks.iter()) {
        if !f.exists() {
            bail!("{}: no such file", f.display());
        }
    }
    match &args.exec {
        Some(cmd) => {
            if args.verbose {
                std::env::set_var("ROS_VM_ECHO", "1");
            }
            opts.echo_errors = true;
            let code = exec(&opts, cmd, Duration::from_secs(args.timeout.unwrap_or(300)))?;
            std::process::exit(code);
        }
        None => {
            opts.interactive = true;
            opts.no_reboot = false;
            // The console service gives ttyS0 its shell; the debug shell stays on ttyS1 (the
            // socket), and the recovery shell takes ttyS0 if boot fails.
            interactive(&opts, args.timeout)
        }
    }
}

fn exec(opts: &VmOptions, cmd: &str, timeout: Duration) -> anyhow::Result<i32> {
    eprintln!("booting ros (accel {}) …", opts.accel);
    let mut vm = Vm::boot("run", opts)?;
    vm.wait_ready(timeout)?;
    let (status, output) = vm.exec(cmd, timeout)?;
    print!("{output}");
    if !output.is_empty() && !output.ends_with('\n') {
        println!();
    }
    vm.poweroff().context("power off")?;
    vm.passed();
    Ok(status)
}

fn interactive(opts: &VmOptions, timeout: Option<u64>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("ttyS1.sock");
    eprintln!(
        "booting ros (accel {}); console below. `poweroff` in the guest or Ctrl-A x to quit.",
        opts.accel
    );
    eprintln!(
        "debug shell also on {} (e.g. socat - UNIX-CONNECT:{})",
        sock.display(),
        sock.display()
    );
    let mut child = ros_tests::qemu::command(opts, &sock)
        .spawn()
        .context("start qemu-system-x86_64")?;
    let status = match timeout {
        None => child.wait()?,
        Some(s) => {
            let deadline = std::time::Instant::now() + Duration::from_secs(s);
            loop {
                if let Some(st) = child.try_wait()? {
                    break st;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("timeout: QEMU still running after {s}s; killed");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    Ok(())
}
