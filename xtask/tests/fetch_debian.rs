//! The fetch layer against the real Debian mirror, through the isolated apt: each test gets its
//! own temporary build directory (for `build/apt/`, `build/extract/`) and download cache (what
//! `ROS_CACHE_DIR` names). Needs network access to deb.debian.org.

use std::fs;
use std::path::{Path, PathBuf};
use xtask::apt::AptEnv;
use xtask::fetch::{self, DebCache, Event, FetchError};
use xtask::lock::{LockedPackage, PackageSpec};
use xtask::util::sha256_file;

const BUSYBOX: &str = "busybox-static";

struct Setup {
    _dir: tempfile::TempDir,
    build: PathBuf,
    apt: AptEnv,
    cache: DebCache,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let build = dir.path().join("build");
    let apt = AptEnv::new(build.join("apt"));
    let cache = DebCache::new(dir.path().join("cache"));
    Setup {
        build,
        apt,
        cache,
        _dir: dir,
    }
}

/// busybox-static as the current index has it (what `cargo xtask relock` would lock).
fn current_busybox(s: &mut Setup) -> LockedPackage {
    s.apt
        .update(false)
        .expect("apt-get update through the isolated apt");
    let pin = fetch::resolve_current(&mut s.apt, BUSYBOX, &PackageSpec::default()).unwrap();
    assert_eq!(pin.name, BUSYBOX);
    assert!(pin.filename.contains("busybox-static_"), "{pin:?}");
    pin
}

fn fetch_events(
    s: &mut Setup,
    pin: &LockedPackage,
) -> (Result<fetch::Fetched, FetchError>, Vec<Event>) {
    let mut events = Vec::new();
    let r = fetch::fetch(
        &mut s.apt,
        &s.cache,
        BUSYBOX,
        &PackageSpec::default(),
        Some(pin),
        &mut |e| events.push(e.clone()),
    );
    (r, events)
}

fn cache_entries(cache: &Path) -> Vec<String> {
    fs::read_dir(cache.join("debs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn fetches_busybox_and_refuses_a_corrupt_cached_deb_by_name() {
    let mut s = setup();
    let pin = current_busybox(&mut s);

    let (r, events) = fetch_events(&mut s, &pin);
    let fetched = r.unwrap();
    assert!(!fetched.stale);
    assert_eq!(fetched.path, s.cache.path_for(&pin.sha256));
    assert_eq!(sha256_file(&fetched.path).unwrap(), pin.sha256);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Downloaded { package, .. } if package == BUSYBOX)),
        "{events:?}"
    );
    // apt stayed inside its directory: lists and config there, nothing else needed.
    assert!(s.apt.root().join("lists").read_dir().unwrap().count() > 1);
    assert!(s.apt.root().join("apt.conf").is_file());

    // Second time: from the cache, no download.
    let (r, events) = fetch_events(&mut s, &pin);
    r.unwrap();
    assert!(
        matches!(events.as_slice(), [Event::FromCache { .. }]),
        "{events:?}"
    );

    // Corrupt the cached file: refused by name, deleted, fetched again.
    let mut bytes = fs::read(&fetched.path).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&fetched.path, &bytes).unwrap();
    let (r, events) = fetch_events(&mut s, &pin);
    let again = r.unwrap();
    let refusal = events
        .iter()
        .find(|e| matches!(e, Event::CorruptCache { .. }))
        .unwrap_or_else(|| panic!("no refusal in {events:?}"))
        .to_string();
    println!("{refusal}");
    assert!(
        refusal.contains(&format!("cached {BUSYBOX} {}", pin.version))
            && refusal.contains(&pin.sha256)
            && refusal.contains("is corrupt")
            && refusal.contains("fetching again"),
        "{refusal}"
    );
    assert!(
        matches!(events.last(), Some(Event::Downloaded { .. })),
        "{events:?}"
    );
    assert_eq!(sha256_file(&again.path).unwrap(), pin.sha256);
    assert_eq!(
        cache_entries(s.cache.dir().parent().unwrap()),
        vec![format!("{}.deb", pin.sha256)]
    );

    // Extracted once; the second call finds the completed tree.
    let extract_root = s.build.join("extract");
    let mut events = Vec::new();
    let tree = fetch::extract(&extract_root, &pin, &again.path, &mut |e| {
        events.push(e.clone())
    })
    .unwrap();
    assert!(tree.join("usr/bin/busybox").is_file());
    assert_eq!(events.len(), 1);
    events.clear();
    fetch::extract(&extract_root, &pin, &again.path, &mut |e| {
        events.push(e.clone())
    })
    .unwrap();
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn wrong_sha256_in_the_lock_fails_naming_busybox_static() {
    let mut s = setup();
    let good = current_busybox(&mut s);
    let wrong = LockedPackage {
        sha256: "0123456789abcdef".repeat(4),
        ..good.clone()
    };
    let (r, _) = fetch_events(&mut s, &wrong);
    let err = r.unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, FetchError::HashMismatch { .. }), "{err:?}");
    assert!(
        msg.contains(BUSYBOX)
            && msg.contains(&good.version)
            && msg.contains(&wrong.sha256)
            && msg.contains(&good.sha256),
        "{msg}"
    );
    // Nothing was filed in the cache, and no temporary download was left behind.
    assert!(cache_entries(s.cache.dir().parent().unwrap()).is_empty());
}

#[test]
fn stale_pin_falls_back_to_the_current_version() {
    let mut s = setup();
    let current = current_busybox(&mut s);
    let gone = LockedPackage {
        version: "1:0.1-1".into(),
        sha256: "ab".repeat(32),
        ..current.clone()
    };
    let (r, events) = fetch_events(&mut s, &gone);
    let fetched = r.unwrap();
    assert!(fetched.stale);
    assert_eq!(fetched.package, current);
    let warning = events
        .iter()
        .find(|e| matches!(e, Event::Stale { .. }))
        .unwrap_or_else(|| panic!("no stale warning in {events:?}"))
        .to_string();
    println!("{warning}");
    assert_eq!(
        warning,
        format!(
            "warning: lock is stale: {BUSYBOX} 1:0.1-1 → {} (run `cargo xtask relock`)",
            current.version
        )
    );
    assert_eq!(sha256_file(&fetched.path).unwrap(), current.sha256);
}
