//! `cargo xtask`: the command line of the image build (`build`, `relock`, `run`, `baseline`).
//!
//! Owns argument parsing, the order of the build steps and everything printed on the terminal.
//! It must not contain build logic of its own: fetching, locking and assembling live in the
//! library modules, the VM runner in `run.rs`. The only place `anyhow` is used (with `run.rs`).

mod run;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use xtask::apt::AptEnv;
use xtask::assemble::{self, InitrdPlan, Outcome};
use xtask::baseline;
use xtask::diskinitrd;
use xtask::fetch::{self, DebCache, Event};
use xtask::layout::Layout;
use xtask::lock::{Lock, LockedPackage, Manifest, Role};
use xtask::oci::{self, ImageInputs};
use xtask::system::{self, Extra, SystemPlan};
use xtask::util::human_size;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "ros image build: pinned Debian packages → kernel, initramfs, system.erofs, OCI images"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Assemble build/out/{vmlinuz,initrd.img,initrd-disk.img,system.erofs,images/*.oci.tar}
    /// (only what changed).
    Build(BuildArgs),
    /// Resolve images/packages.toml against Debian trixie's index and rewrite images/packages.lock.
    Relock,
    /// Boot the image in QEMU.
    Run(RunArgs),
    /// Build the benchmark's Debian trixie + systemd + containerd image in build/bench/baseline/
    /// (rootfs.img, initrd.img, sizes.toml; needs root and build/out from `cargo xtask build`).
    Baseline,
}

#[derive(Args)]
struct BuildArgs {
    /// Use this ros binary as /init instead of running `cargo build --release -p ros`.
    #[arg(long, value_name = "PATH")]
    ros: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Build(args) => build(args),
        Cmd::Relock => relock(),
        Cmd::Run(args) => run::main(args.args),
        Cmd::Baseline => baseline(),
    }
}

/// Default zstd level for the initramfs; `ROS_ZSTD_LEVEL` overrides it.
const ZSTD_LEVEL: u32 = 19;

fn build(args: BuildArgs) -> Result<()> {
    let started = Instant::now();
    let layout = Layout::discover();
    // Two builds of one checkout at once (two `scripts/run`s) would race on the outputs.
    let _build_lock = fetch::DirLock::acquire(&layout.build().join("build.lock"))?;
    let ros = match args.ros {
        Some(path) => {
            std::fs::canonicalize(&path).with_context(|| format!("--ros {}", path.display()))?
        }
        None => assemble::build_ros(&layout.root)?,
    };
    println!("ros binary: {}", layout.display(&ros));

    let manifest_path = layout.manifest();
    let mut report = |e: &Event| println!("  {e}");
    println!(
        "packages (cache {}):",
        DebCache::from_env()?.dir().display()
    );
    let (manifest, packages) = fetch::fetch_pinned(&layout, &mut report)?;
    let tree = |role: Role| -> Result<(&LockedPackage, &std::path::Path)> {
        let (name, _) = manifest.with_role(role, &manifest_path)?;
        let (pin, root) = packages
            .packages
            .get(name)
            .context("package missing after fetch")?;
        Ok((pin, root.as_path()))
    };
    let (kernel_pkg, kernel_root) = tree(Role::Kernel)?;
    let (busybox_pkg, busybox_root) = tree(Role::Busybox)?;
    let epoch = assemble::source_date_epoch();
    let tool = assemble::tool_hash();
    let version = env!("CARGO_PKG_VERSION");

    let k = assemble::kernel(&layout, kernel_pkg, kernel_root)?;
    match k.outcome {
        Outcome::UpToDate => println!(
            "{} up to date (inputs unchanged): {}",
            layout.display(&k.path),
            human_size(k.size)
        ),
        Outcome::Built => println!(
            "{} {} ({})",
            layout.display(&k.path),
            human_size(k.size),
            k.image
        ),
    }

    let zstd_level = match std::env::var("ROS_ZSTD_LEVEL") {
        Ok(v) => v.parse().with_context(|| format!("ROS_ZSTD_LEVEL={v}"))?,
        Err(_) => ZSTD_LEVEL,
    };
    // The system service images, then the system image that ships them.
    let inputs = ImageInputs {
        ros: &ros,
        packages: &packages,
        version,
        epoch,
    };
    let mut extras = Vec::new();
    for image in oci::discover(&layout.images())? {
        let r = oci::ensure(&layout, &image, &inputs, &tool)?;
        match (&r.outcome, &r.details) {
            (Outcome::Built, Some(d)) => println!(
                "{} {} ({}): {} entries, {} unpacked",
                layout.display(&r.path),
                human_size(r.size),
                r.reference,
                d.entries,
                human_size(d.unpacked)
            ),
            _ => println!(
                "{} up to date (inputs unchanged): {} ({})",
                layout.display(&r.path),
                human_size(r.size),
                r.reference
            ),
        }
        extras.push(Extra {
            source: r.path.clone(),
            target: format!("{}/{}.oci.tar", system::IMAGES_DIR, image.name),
        });
    }
    let packing = Instant::now();
    let s = system::build(
        &layout,
        &SystemPlan {
            manifest_path: &layout.system_manifest(),
            packages: &packages,
            extras: &extras,
            epoch,
            tool: tool.clone(),
        },
    )?;
    match &s.staged {
        Some(st) => println!(
            "{} {} (erofs lz4hc, {} files, {} staged, packed in {:.1}s): {}; libraries: {}",
            layout.display(&s.path),
            human_size(s.size),
            st.files,
            human_size(st.bytes),
            packing.elapsed().as_secs_f64(),
            st.binaries.join(" "),
            st.libraries
                .values()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(" ")
        ),
        None => println!(
            "{} up to date (inputs unchanged): {}",
            layout.display(&s.path),
            human_size(s.size)
        ),
    }

    let plan = InitrdPlan {
        ros: &ros,
        kernel: (kernel_pkg, kernel_root),
        busybox: (busybox_pkg, busybox_root),
        modules_list: &layout.modules_list(),
        os_config: &layout.os_config(),
        version,
        epoch,
        zstd_level,
        tool: tool.clone(),
        system: Some(&s.path),
    };
    let packing = Instant::now();
    let i = assemble::initrd(&layout, &plan)?;
    match i.outcome {
        Outcome::UpToDate => println!("{} (up to date, inputs unchanged)", i.describe(&layout)),
        Outcome::Built => println!(
            "{} (staged and packed in {:.1}s)",
            i.describe(&layout),
            packing.elapsed().as_secs_f64()
        ),
    }
    // The same main cpio without the system image, for a node with it on a disk.
    let d = diskinitrd::build(
        &layout,
        &s.path,
        &assemble::main_cpio(&layout),
        epoch,
        &tool,
    )?;
    match d.outcome {
        Outcome::UpToDate => println!("{} (up to date, inputs unchanged)", d.describe(&layout)),
        Outcome::Built => println!("{}", d.describe(&layout)),
    }
    println!("done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn relock() -> Result<()> {
    let layout = Layout::discover();
    let manifest = Manifest::load(&layout.manifest())?;
    let lock_path = layout.lock();
    let old = Lock::load_or_empty(&lock_path)?;
    let mut apt = AptEnv::new(layout.apt());
    println!("updating the package index (Debian trixie)…");
    apt.update(true)
        .with_context(|| format!("updating the index in {}", apt.root().display()))?;
    let mut new = Lock::default();
    for (name, spec) in &manifest.packages {
        let pin = fetch::resolve_current(&mut apt, name, spec)?;
        let via = pin
            .from
            .as_deref()
            .map(|f| format!(" (via {f})"))
            .unwrap_or_default();
        match old.entry_for(name) {
            Some(o) if o == &pin => println!("  {} {}{via}: unchanged", pin.name, pin.version),
            Some(o) => println!(
                "  {} {} → {} {}{via}",
                o.name, o.version, pin.name, pin.version
            ),
            None => println!(
                "  {} {}{via}: new ({})",
                pin.name,
                pin.version,
                human_size(pin.size)
            ),
        }
        new.packages.push(pin);
    }
    if manifest.packages.is_empty() {
        bail!("{} lists no packages", layout.manifest().display());
    }
    new.write(&lock_path)?;
    println!("wrote {}", layout.display(&lock_path));
    Ok(())
}

fn baseline() -> Result<()> {
    let started = Instant::now();
    let layout = Layout::discover();
    let dir = layout.baseline();
    let outcome = baseline::build(&layout, &mut |step| println!("  {step}"))
        .with_context(|| format!("building {}", layout.display(&dir)))?;
    let (sizes, verb) = match outcome {
        baseline::Outcome::UpToDate(s) => {
            println!("baseline up to date (inputs unchanged)");
            (s, "unchanged")
        }
        baseline::Outcome::Built(s) => (s, "built"),
    };
    println!(
        "{}: {} {} (tree {}), {} {}; {} in {:.1}s",
        layout.display(&dir),
        baseline::ROOTFS,
        human_size(sizes.rootfs_img_bytes),
        human_size(sizes.rootfs_tree_bytes),
        baseline::INITRD,
        human_size(sizes.initrd_bytes),
        verb,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
