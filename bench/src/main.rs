//! `scripts/bench`: boots ros and the Debian systemd baseline with the same kernel, containerd
//! and QEMU shape, measures boot milestones, memory, image sizes and live-change latencies,
//! and writes `report.md`, `summary.csv` and `samples.csv`.
//!
//! Owns the order of the measurements and the terminal output. Guest commands live in
//! `guest`, the rows and their rendering in `report`. A benchmark, not a test: nothing here
//! asserts a speed; it fails only when a row could not be measured.

mod guest;
mod probe;
mod report;
mod stats;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use guest::{Booted, Images, RosLayout};
use report::{Context, Results, System};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "scripts/bench",
    about = "ros versus a Debian trixie + systemd baseline"
)]
struct Args {
    /// Boots per system for the boot and memory rows.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Measure one system only.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Workload containers running while the listing latency is measured.
    #[arg(long, default_value_t = 100)]
    workloads: usize,
    /// Samples for the sysctl and listing latencies.
    #[arg(long, default_value_t = 100)]
    sets: usize,
    /// Where report.md and the CSVs go.
    #[arg(long, default_value = "build/bench")]
    out: PathBuf,
    /// QEMU accelerator: tcg (default) or kvm.
    #[arg(long, default_value = "tcg")]
    accel: String,
    /// Boot ros with its system image inside the initramfs (held in RAM, as `scripts/run`
    /// does) instead of on a disk as an installed node has it.
    #[arg(long)]
    ros_initramfs: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Only {
    Ros,
    Baseline,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    if args.runs == 0 || args.sets == 0 || args.workloads == 0 {
        bail!("--runs, --sets and --workloads must be at least 1");
    }
    let systems: Vec<System> = match args.only {
        Some(Only::Ros) => vec![System::Ros],
        Some(Only::Baseline) => vec![System::Baseline],
        None => vec![System::Ros, System::Baseline],
    };
    let images = Images {
        ros_layout: if args.ros_initramfs {
            RosLayout::Initramfs
        } else {
            RosLayout::Disk
        },
        ..Images::default()
    };
    let mut results = Results::default();
    for &sys in &systems {
        measure(sys, &args, &images, &mut results)?;
    }
    let ctx = Context {
        machine: machine(),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        runs: args.runs,
        workloads: args.workloads,
        sets: args.sets,
        qemu: format!(
            "{} ({}, 2 vCPU, 1 GiB)",
            command_line("qemu-system-x86_64", &["--version"])
                .lines()
                .next()
                .unwrap_or("?")
                .replace("QEMU emulator version ", ""),
            args.accel.to_uppercase()
        ),
        layout: format!(
            "Both boot the same kernel (build/out/vmlinuz, Debian's cloud kernel) and run the \
             same containerd and runc; ros {}, the baseline from its ext4 root on a virtio disk \
             with Debian's initramfs.",
            match images.ros_layout {
                RosLayout::Disk =>
                    "with initrd-disk.img and its system image (system.erofs) on a virtio disk",
                RosLayout::Initramfs => "with initrd.img, its system image inside (held in RAM)",
            }
        ),
    };
    write_reports(&args.out, &results, &ctx)?;
    println!("\n{}", report::table(&results, args.workloads));
    println!("report: {}", args.out.join("report.md").display());
    let missing = results.missing(&systems);
    if !missing.is_empty() {
        bail!("rows not measured: {}", missing.join(", "));
    }
    Ok(())
}

fn add(results: &mut Results, key: &str, sys: System, v: f64) -> Result<()> {
    results.add(key, sys, v).map_err(anyhow::Error::msg)
}

const MIB: f64 = 1024.0 * 1024.0;

fn measure(sys: System, args: &Args, images: &Images, results: &mut Results) -> Result<()> {
    sizes(sys, images, results)?;
    for run in 1..=args.runs {
        let name = format!("bench-{}-{run}", sys.name());
        let mut b = guest::boot(sys, &name, images, &args.accel, None)?;
        let ms = b.milestones()?;
        let mem = b.memory()?;
        for (k, v) in [
            ("boot.userspace", ms.userspace),
            ("boot.init", ms.init),
            ("boot.containerd", ms.containerd),
            ("boot.first_container", ms.first_container),
            ("boot.ready", ms.ready),
            ("mem.pid1", mem.pid1 as f64 / 1024.0),
            ("mem.containerd", mem.containerd as f64 / 1024.0),
            ("mem.containerd.pss", mem.containerd_pss as f64 / 1024.0),
            ("mem.used", mem.used as f64 / 1024.0),
        ] {
            add(results, k, sys, v)?;
        }
        println!(
            "[{} {run}/{}] ready {:.2}s after kernel start (wall {:.1}s): init {:.2}s, containerd {:.2}s, \
             first container {:.2}s; PID 1 {:.1} MiB, containerd {:.1} MiB (PSS {:.1}), used {:.1} MiB",
            sys.name(),
            args.runs,
            ms.ready,
            b.wall_ready.as_secs_f64(),
            ms.init,
            ms.containerd,
            ms.first_container,
            mem.pid1 as f64 / 1024.0,
            mem.containerd as f64 / 1024.0,
            mem.containerd_pss as f64 / 1024.0,
            mem.used as f64 / 1024.0,
        );
        if run == 1 {
            latencies(&mut b, args, results)?;
        }
        one_more_container(&mut b, run, results)?;
        b.vm.passed();
    }
    workloads(sys, args, images, results)?;
    workloads_shared(sys, args, images, results)
}

fn sizes(sys: System, images: &Images, results: &mut Results) -> Result<()> {
    let len = |p: &Path| -> Result<f64> {
        Ok(std::fs::metadata(p)
            .with_context(|| {
                format!(
                    "{} (run `cargo xtask build` / `cargo xtask baseline`)",
                    p.display()
                )
            })?
            .len() as f64
            / MIB)
    };
    let kernel = len(&images.out.join("vmlinuz"))?;
    let (boot, rootfs, total) = match sys {
        System::Ros => {
            let boot = kernel + len(&images.ros_initrd())?;
            let system = len(&images.out.join("system.erofs"))?;
            match images.ros_layout {
                RosLayout::Disk => (boot, system, boot + system),
                // The system image travels inside the initramfs.
                RosLayout::Initramfs => (boot, system, boot),
            }
        }
        System::Baseline => {
            let boot = kernel + len(&images.baseline.join("initrd.img"))?;
            let tree = baseline_tree_bytes(&images.baseline)? / MIB;
            (boot, tree, boot + tree)
        }
    };
    add(results, "size.boot", sys, boot)?;
    add(results, "size.rootfs", sys, rootfs)?;
    add(results, "size.total", sys, total)
}

/// `rootfs_tree_bytes` from the baseline build's sizes file.
fn baseline_tree_bytes(dir: &Path) -> Result<f64> {
    let path = dir.join("sizes.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} (run `cargo xtask baseline`)", path.display()))?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "rootfs_tree_bytes").then(|| v.trim().parse::<f64>().ok())?
        })
        .with_context(|| format!("{}: no rootfs_tree_bytes", path.display()))
}

fn latencies(b: &mut Booted, args: &Args, results: &mut Results) -> Result<()> {
    let sys = b.system;
    let shell: Vec<f64> = (0..20).map(|_| b.timed("true")).collect::<Result<_, _>>()?;
    let (shell_p50, _) = stats::p50_p99(&shell);
    add(results, "lat.shell", sys, shell_p50)?;
    b.prepare_sysctl()?;
    let mut sets = Vec::with_capacity(args.sets);
    for i in 0..args.sets {
        // Consecutive values differ, so each set is a real change.
        sets.push(b.timed(&b.sysctl_cmd(10 + (i % 80) as u32))?);
    }
    let (p50, p99) = stats::p50_p99(&sets);
    println!(
        "[{}] sysctl set until applied over {} sets: p50 {p50:.1} ms, p99 {p99:.1} ms (shell round trip {shell_p50:.1} ms)",
        sys.name(),
        args.sets,
    );
    add(results, "lat.sysctl.p50", sys, p50)?;
    add(results, "lat.sysctl.p99", sys, p99)
}

fn one_more_container(b: &mut Booted, run: usize, results: &mut Results) -> Result<()> {
    let sys = b.system;
    b.warm_up()?;
    let via = match sys {
        System::Ros => b.timed(&Booted::ros_workload_cmd("extra"))?,
        System::Baseline => b.timed(&Booted::ctr_run_cmd("extra"))?,
    };
    let ctr = b.timed(&Booted::ctr_run_cmd("ctrx"))?;
    println!(
        "[{} {run}] one more container: {via:.0} ms through {}, {ctr:.0} ms through ctr",
        sys.name(),
        if sys == System::Ros { "ros" } else { "ctr" }
    );
    add(results, "lat.container", sys, via)?;
    add(results, "lat.container.ctr", sys, ctr)
}

/// Boots `sys` and starts N workloads (one shim each, or `shared` in one); returns the booted
/// system and the seconds from ready until all ran.
fn boot_with_workloads(
    sys: System,
    args: &Args,
    images: &Images,
    shared: bool,
) -> Result<(guest::Booted, f64)> {
    let n = args.workloads;
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("os-config.toml");
    std::fs::write(&cfg, guest::ros_workloads_config(n, shared))?;
    let shim = if shared { "-shared" } else { "" };
    let name = format!("bench-{}-workloads{shim}", sys.name());
    let mut b = guest::boot(sys, &name, images, &args.accel, Some(&cfg))?;
    let label = format!("{}{shim}", sys.name());
    let secs = b.start_workloads(n, shared, &|k| {
        eprint!("\r[{label}] {k}/{n} workloads running ")
    })?;
    eprintln!();
    println!("[{label}] {n} workloads running {secs:.0}s after ready");
    Ok((b, secs))
}

fn workloads(sys: System, args: &Args, images: &Images, results: &mut Results) -> Result<()> {
    let n = args.workloads;
    let (mut b, secs) = boot_with_workloads(sys, args, images, false)?;
    let label = sys.name();
    let used = b.used_kib()? as f64 / 1024.0;
    let cmd = b.list_cmd();
    let lat: Vec<f64> = (0..args.sets)
        .map(|_| b.timed(cmd))
        .collect::<Result<_, _>>()?;
    let (p50, p99) = stats::p50_p99(&lat);
    println!("[{label}] `{cmd}` with {n} workloads: p50 {p50:.1} ms, p99 {p99:.1} ms; used {used:.0} MiB");
    add(results, "lat.ps.p50", sys, p50)?;
    add(results, "lat.ps.p99", sys, p99)?;
    add(results, "time.workloads", sys, secs)?;
    add(results, "mem.used.workloads", sys, used)?;
    b.vm.passed();
    Ok(())
}

/// The same workloads asking for one shared shim on both systems (containerd's runc v2 shim
/// grouping: ros's `shim = "shared"`, the baseline's `ctr run --annotation`). How many shims
/// serve them is a row too: runc's own start (the baseline's) probes the group's socket for
/// 100 ms and starts another shim when that times out under TCG (docs/runtime.md "Shared
/// shims").
fn workloads_shared(
    sys: System,
    args: &Args,
    images: &Images,
    results: &mut Results,
) -> Result<()> {
    let (mut b, secs) = boot_with_workloads(sys, args, images, true)?;
    let used = b.used_kib()? as f64 / 1024.0;
    let shims = b.shim_count()?;
    println!(
        "[{}-shared] used {used:.0} MiB with {} workloads in {shims} shim(s)",
        sys.name(),
        args.workloads
    );
    add(results, "time.workloads.shared", sys, secs)?;
    add(results, "shims.workloads.shared", sys, shims as f64)?;
    add(results, "mem.used.workloads.shared", sys, used)?;
    b.vm.passed();
    Ok(())
}

fn write_reports(out: &Path, results: &Results, ctx: &Context) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    for (name, text) in [
        ("report.md", report::markdown(results, ctx)),
        ("summary.csv", report::summary_csv(results)),
        ("samples.csv", report::samples_csv(results)),
    ] {
        let path = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// "N× CPU model, X GiB, Debian …": the machine the numbers came from.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    format!("{cpus}× {model}, {mem_gib:.0} GiB, {os}")
}
