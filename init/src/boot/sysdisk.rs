//! The system image on a block device: which disk or partition holds the raw erofs image whose
//! UUID the initramfs names (`/usr/lib/ros/system.uuid`, written by the build for
//! `initrd-disk.img`; docs/images.md "The system image on a disk").
//!
//! Owns the matching: list the devices as the state-disk code does (`storage::device::list`,
//! which skips loop, ram, zram, sr, fd and nbd), read each one's first bytes
//! (`storage::probe::read_head`), compare the erofs magic and UUID; poll until one matches or
//! the wait is over (virtio disks appear asynchronously after `virtio_blk` loads).
//! Must not: write to a device, or wait longer than it is told. Limitations: the UUID is the
//! only check; nothing verifies the image's contents (dm-verity would).

use crate::storage::device::{self, BlockDev, Dirs};
use crate::storage::probe;
use std::time::{Duration, Instant};

/// How long PID 1 waits for the disk to appear.
pub const WAIT: Duration = Duration::from_secs(10);
/// How often it looks again.
pub const POLL: Duration = Duration::from_millis(200);

/// A UUID as the build writes it: 32 hex digits in the 8-4-4-4-12 form, any case. Returns it
/// lowercase, or `None`.
pub fn parse_uuid(text: &str) -> Option<String> {
    let u = text.trim().to_ascii_lowercase();
    let groups: Vec<&str> = u.split('-').collect();
    let shape_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    let hex_ok = groups
        .iter()
        .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    (shape_ok && hex_ok).then_some(u)
}

/// One pass over the devices: the first (by name) whose erofs UUID is `uuid`, or what was seen
/// on each (`vda: ext4? no erofs`, `vdb: erofs UUID …`, `vdc: Permission denied`), for the error.
pub fn find(dirs: &Dirs, uuid: &str) -> Result<BlockDev, Vec<String>> {
    let mut seen = Vec::new();
    for d in device::list(dirs) {
        match probe::read_head(&d.path, probe::EROFS_HEAD) {
            Ok(head) => match probe::erofs_uuid(&head) {
                Some(u) if u == uuid => return Ok(d),
                Some(u) => seen.push(format!("{}: erofs UUID {u}", d.name)),
                None => seen.push(format!("{}: no erofs", d.name)),
            },
            Err(e) => seen.push(format!("{}: {e}", d.name)),
        }
    }
    Err(seen)
}

/// [`find`] every `poll` until it matches or `wait` has passed; `Err` holds the last pass.
pub fn wait_for(
    dirs: &Dirs,
    uuid: &str,
    wait: Duration,
    poll: Duration,
) -> Result<BlockDev, Vec<String>> {
    let deadline = Instant::now() + wait;
    loop {
        match find(dirs, uuid) {
            Ok(d) => return Ok(d),
            Err(seen) if Instant::now() >= deadline => return Err(seen),
            Err(_) => std::thread::sleep(poll),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::device::FakeDirs;
    use std::path::Path;

    const UUID: &str = "0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    fn uuid_bytes(u: &str) -> Vec<u8> {
        let hex: String = u.chars().filter(|c| *c != '-').collect();
        (0..16)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// A device `name` in `dirs` whose first 4 KiB carry an erofs superblock with `uuid` (or
    /// zeros).
    fn device(dirs: &Dirs, name: &str, uuid: Option<&str>, partition: bool) {
        let sys = dirs.sys_block.join(name);
        std::fs::create_dir_all(&sys).unwrap();
        if partition {
            std::fs::write(sys.join("partition"), "1\n").unwrap();
        }
        let mut head = vec![0u8; 4096];
        if let Some(u) = uuid {
            head[1024..1028].copy_from_slice(&probe::EROFS_MAGIC.to_le_bytes());
            head[1024 + 48..1024 + 64].copy_from_slice(&uuid_bytes(u));
        }
        std::fs::write(dirs.dev.join(name), head).unwrap();
    }

    impl FakeDirs {
        fn device(&self, name: &str, uuid: Option<&str>, partition: bool) {
            device(&self.dirs, name, uuid, partition);
        }
    }

    #[test]
    fn uuids_parse_in_the_8_4_4_4_12_form_only() {
        assert_eq!(
            parse_uuid(" 0B9E3F5A-1C2D-4E5F-8A9B-0C1D2E3F4A5B\n").as_deref(),
            Some(UUID)
        );
        assert_eq!(parse_uuid("0b9e3f5a1c2d4e5f8a9b0c1d2e3f4a5b"), None);
        assert_eq!(parse_uuid("0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5g"), None);
        assert_eq!(parse_uuid(""), None);
    }

    #[test]
    fn the_device_with_the_uuid_is_found_among_others_and_partitions_count() {
        let f = FakeDirs::default();
        f.device("vda", None, false);
        f.device("vdb", Some("11111111-2222-4333-8444-555555555555"), false);
        f.device("vdc", None, false);
        f.device("vdc1", Some(UUID), true);
        // A loop device carrying it (the image attached by hand) is never taken.
        f.device("loop0", Some(UUID), false);
        let d = find(&f.dirs, UUID).unwrap();
        assert_eq!((d.name.as_str(), d.partition), ("vdc1", true));
        assert_eq!(d.path, f.dirs.dev.join("vdc1"));
    }

    #[test]
    fn no_match_names_every_device_looked_at() {
        let f = FakeDirs::default();
        f.device("vda", None, false);
        f.device("vdb", Some("11111111-2222-4333-8444-555555555555"), false);
        f.device("loop0", Some(UUID), false);
        assert_eq!(
            find(&f.dirs, UUID).unwrap_err(),
            [
                "vda: no erofs",
                "vdb: erofs UUID 11111111-2222-4333-8444-555555555555"
            ]
        );
        let empty = FakeDirs::default();
        assert_eq!(find(&empty.dirs, UUID).unwrap_err(), Vec::<String>::new());
    }

    #[test]
    fn waiting_sees_a_disk_that_appears_late_and_gives_up_in_time() {
        let f = FakeDirs::default();
        let started = Instant::now();
        let seen = wait_for(
            &f.dirs,
            UUID,
            Duration::from_millis(300),
            Duration::from_millis(50),
        );
        assert_eq!(seen.unwrap_err(), Vec::<String>::new());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // The disk shows up while PID 1 polls.
        let dirs = f.dirs.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            device(&dirs, "vdb", Some(UUID), false);
        });
        let d = wait_for(
            &f.dirs,
            UUID,
            Duration::from_secs(5),
            Duration::from_millis(50),
        )
        .unwrap();
        late.join().unwrap();
        assert_eq!(d.path, f.dirs.dev.join("vdb"));
        assert!(Path::new(&d.path).exists());
    }
}
