//! Host tests of the state-disk decision over a fake `/sys/class/block` + `/dev` holding
//! image files, with the real mke2fs (e2fsprogs) doing the formatting.

use super::device::FakeDirs;
use super::*;
use crate::config::schema::{Mount, StateDisk};
use crate::net::cni::StdRunner;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::process::Command;

impl FakeDirs {
    fn disk(&self, name: &str, mib: u64) -> PathBuf {
        std::fs::create_dir_all(self.dirs.sys_block.join(name)).unwrap();
        let p = self.dirs.dev.join(name);
        File::create(&p).unwrap().set_len(mib << 20).unwrap();
        p
    }
}

fn mke2fs() -> PathBuf {
    ["/usr/sbin/mke2fs", "/sbin/mke2fs"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("e2fsprogs on the host")
}

fn sha(p: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(p).unwrap()))
}

fn state(device: &str, autoformat: bool) -> StateDisk {
    StateDisk {
        device: device.into(),
        autoformat,
        wait_s: 0,
    }
}

fn run_choose(
    f: &FakeDirs,
    st: &StateDisk,
    cmdline: Option<&str>,
) -> (Result<StateDecision, StorageError>, Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut formats = 0;
    let r = choose_state(
        st,
        cmdline,
        &f.dirs,
        &mut |dev| {
            formats += 1;
            mkfs(&StdRunner, &mke2fs(), dev)
        },
        &mut |l| lines.push(l),
    );
    (r, lines, formats)
}

#[test]
fn a_blank_disk_is_formatted_with_the_label_and_found_by_it_next_time() {
    let f = FakeDirs::default();
    let vda = f.disk("vda", 32);
    let (r, lines, n) = run_choose(&f, &state("LABEL=ROS_STATE", true), None);
    assert_eq!(
        r.unwrap(),
        StateDecision::Disk {
            device: vda.clone(),
            formatted: true
        }
    );
    assert_eq!(n, 1);
    assert!(lines[0].contains("formatted"), "{lines:?}");
    assert_eq!(
        probe::probe(&vda).unwrap().ext().map(|e| (e.0, e.1)),
        Some(("ext4", "ROS_STATE"))
    );
    // The second boot finds it by label and formats nothing.
    let (r, lines, n) = run_choose(&f, &state("LABEL=ROS_STATE", true), None);
    assert_eq!(
        r.unwrap(),
        StateDecision::Disk {
            device: vda,
            formatted: false
        }
    );
    assert_eq!((n, lines.len()), (0, 0));
}

#[test]
fn disks_that_carry_anything_are_refused_by_name_and_left_unchanged() {
    let f = FakeDirs::default();
    let ext = f.disk("vda", 16);
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "DATA"])
        .arg(&ext)
        .status()
        .unwrap()
        .success());
    let gpt = f.disk("vdb", 16);
    {
        let mut h = File::options().write(true).open(&gpt).unwrap();
        h.seek(SeekFrom::Start((16 << 20) - 512)).unwrap();
        h.write_all(b"EFI PART").unwrap();
    }
    let md = f.disk("vdc", 16);
    {
        let mut h = File::options().write(true).open(&md).unwrap();
        h.seek(SeekFrom::Start(((16 << 20) - 8192) & !4095))
            .unwrap();
        h.write_all(&0xa92b_4efcu32.to_le_bytes()).unwrap();
        h.write_all(&1u32.to_le_bytes()).unwrap();
    }
    let before: Vec<String> = [&ext, &gpt, &md].iter().map(|p| sha(p)).collect();
    let (r, lines, n) = run_choose(&f, &state("LABEL=ROS_STATE", true), None);
    assert!(matches!(r.unwrap(), StateDecision::Ram { .. }));
    assert_eq!(n, 0);
    assert_eq!(
        lines,
        [
            format!(
                "storage.state: {} not formatted: it carries ext4 (LABEL=DATA)",
                ext.display()
            ),
            format!(
                "storage.state: {} not formatted: it carries a backup GPT header at the end",
                gpt.display()
            ),
            format!(
                "storage.state: {} not formatted: it carries an md superblock (1.0)",
                md.display()
            ),
        ]
    );
    let after: Vec<String> = [&ext, &gpt, &md].iter().map(|p| sha(p)).collect();
    assert_eq!(before, after);
    // By path: the same refusal for the one device named.
    let (r, lines, n) = run_choose(&f, &state("/dev/vdb", true), None);
    assert!(matches!(r.unwrap(), StateDecision::Ram { .. }));
    assert_eq!(n, 0);
    assert!(lines[0].contains("backup GPT"), "{lines:?}");
    assert_eq!(sha(&gpt), before[1]);
}

#[test]
fn the_system_image_disk_is_never_taken_for_a_blank_one() {
    // A node booted from initrd-disk.img: vda holds the raw erofs system image, vdb is blank.
    let f = FakeDirs::default();
    let tree = f.dirs.dev.parent().unwrap().join("tree");
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    std::fs::write(tree.join("usr/bin/containerd"), b"not really").unwrap();
    std::fs::create_dir_all(f.dirs.sys_block.join("vda")).unwrap();
    let vda = f.dirs.dev.join("vda");
    let out = Command::new("mkfs.erofs")
        .arg("-U6f1c2a3b-0000-4000-8000-00000000beef")
        .arg(&vda)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.erofs (erofs-utils): {out:?}");
    let vdb = f.disk("vdb", 16);
    let before = sha(&vda);
    let (r, lines, n) = run_choose(&f, &state("LABEL=ROS_STATE", true), None);
    assert_eq!(
        r.unwrap(),
        StateDecision::Disk {
            device: vdb,
            formatted: true
        }
    );
    assert_eq!(n, 1);
    assert_eq!(
        lines[0],
        format!(
            "storage.state: {} not formatted: it carries an erofs filesystem",
            vda.display()
        )
    );
    assert_eq!(sha(&vda), before);
}

#[test]
fn none_on_the_cmdline_or_in_the_config_and_a_missing_label_mean_ram() {
    let f = FakeDirs::default();
    f.disk("vda", 16);
    let (r, _, n) = run_choose(&f, &state("LABEL=ROS_STATE", true), Some("none"));
    assert!(matches!(r.unwrap(), StateDecision::Ram { .. }));
    assert_eq!(n, 0);
    let (r, _, _) = run_choose(&f, &state("none", true), None);
    assert!(matches!(r.unwrap(), StateDecision::Ram { .. }));
    // The default: no such label and no autoformat → RAM, nothing touched, no console line.
    let (r, lines, n) = run_choose(&f, &state("LABEL=ROS_STATE", false), None);
    assert!(matches!(r.unwrap(), StateDecision::Ram { .. }));
    assert_eq!((n, lines.len()), (0, 0));
    let (r, _, _) = run_choose(&f, &state("sdb", false), None);
    assert!(matches!(r, Err(StorageError::BadSpec { .. })));
}

#[test]
fn extra_mounts_resolve_by_label_detect_the_type_and_a_missing_required_one_is_an_error() {
    let f = FakeDirs::default();
    let data = f.disk("vdb", 16);
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "DATA"])
        .arg(&data)
        .status()
        .unwrap()
        .success());
    let m = |source: &str, optional: bool| Mount {
        source: source.into(),
        target: "/data".into(),
        fstype: None,
        options: vec!["noatime".into(), "errors=remount-ro".into()],
        optional,
    };
    let mut warnings = Vec::new();
    let got = resolve_mounts(
        &[m("LABEL=DATA", false), m("LABEL=GONE", true)],
        &f.dirs,
        Duration::ZERO,
        &mut |w| warnings.push(w),
    )
    .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].device, data);
    assert_eq!(got[0].fstype, "ext4");
    assert_eq!(got[0].flags, MsFlags::MS_NOATIME);
    assert_eq!(got[0].data, "errors=remount-ro");
    assert!(warnings[0].contains("LABEL=GONE"), "{warnings:?}");
    let err = resolve_mounts(
        &[m("LABEL=GONE", false)],
        &f.dirs,
        Duration::ZERO,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "storage.mounts[0]: source LABEL=GONE for /data not found (set optional = true to boot without it)"
    );
}

#[test]
fn the_state_disk_is_found_by_uuid_or_path_and_never_formatted_by_uuid() {
    let f = FakeDirs::default();
    let vdb = f.disk("vdb", 16);
    assert!(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "OTHER",
            "-U",
            "6a1f0a3e-0000-4000-8000-00000000abcd"
        ])
        .arg(&vdb)
        .status()
        .unwrap()
        .success());
    f.disk("vdc", 16);
    let (r, _, n) = run_choose(
        &f,
        &state("UUID=6A1F0A3E-0000-4000-8000-00000000ABCD", true),
        None,
    );
    assert_eq!(
        r.unwrap(),
        StateDecision::Disk {
            device: vdb.clone(),
            formatted: false
        }
    );
    assert_eq!(n, 0);
    // An unknown UUID with autoformat: the blank vdc is left alone.
    let (r, _, n) = run_choose(&f, &state("UUID=00000000-dead", true), None);
    assert!(matches!(r.unwrap(), StateDecision::Ram { .. }));
    assert_eq!(n, 0);
    // By path (cmdline ros.state= wins over the config): any ext filesystem is used as it is.
    let (r, _, n) = run_choose(&f, &state("LABEL=ROS_STATE", false), Some("/dev/vdb"));
    assert_eq!(
        r.unwrap(),
        StateDecision::Disk {
            device: vdb,
            formatted: false
        }
    );
    assert_eq!(n, 0);
}
