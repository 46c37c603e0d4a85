//! `build/out/initrd-disk.img`: the initramfs for a node whose system image is on a disk. Like
//! `initrd.img` it is an uncompressed newc segment followed by the zstd main cpio
//! (`build/initrd-main.cpio.zst`, the same bytes), but the segment carries only
//! `usr/lib/ros/system.uuid` — the UUID of this build's `system.erofs`, read from its
//! superblock — and not the image itself: PID 1 finds the block device holding that erofs image
//! by the UUID and mounts it directly (docs/images.md "The system image on a disk").
//!
//! Owns `build/out/initrd-disk.img` and its stamp. Rebuilt only when its inputs change (the main
//! cpio's hash, the UUID, the epoch, the xtask build); the same inputs give the same bytes.
//! Must not: build the main cpio (`assemble::initrd` does) or print.

use crate::assemble::{inputs_text, AssembleError, Outcome, Stamp};
use crate::cpio::NewcWriter;
use crate::layout::Layout;
use crate::util::{human_size, sha256_file};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Bumped when the layout of the output changes in a way its inputs do not show.
const FORMAT: u32 = 1;
/// The output's file name in `build/out`.
pub const OUTPUT: &str = "initrd-disk.img";
/// Where the UUID is in the initramfs (PID 1's `boot::sysimage::UUID_FILE`).
pub const UUID_FILE: &str = "usr/lib/ros/system.uuid";
/// Start of the erofs superblock (`EROFS_SUPER_OFFSET` in erofs-utils' `include/erofs_fs.h`).
const SB: usize = 1024;
/// `EROFS_SUPER_MAGIC_V1`, little-endian at [`SB`].
const MAGIC: u32 = 0xE0F5_E1E2;
/// `uuid[16]` in `struct erofs_super_block`: after `magic`, `checksum`, `feature_compat` (3×4),
/// `blkszbits`, `sb_extslots` (2×1), `root_nid` (2), `inos`, `build_time` (2×8),
/// `build_time_nsec`, `blocks`, `meta_blkaddr`, `xattr_blkaddr` (4×4) = 48.
const UUID_AT: usize = SB + 48;

#[derive(Debug, thiserror::Error)]
pub enum DiskInitrdError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not an erofs image (no magic 0xE0F5E1E2 at byte 1024)")]
    NotErofs { path: PathBuf },
    #[error(transparent)]
    Assemble(#[from] AssembleError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskInitrdError {
    let path = path.to_owned();
    move |source| DiskInitrdError::Io { path, source }
}

/// The UUID (lowercase, 8-4-4-4-12) in the erofs superblock at the start of `head`, or `None`
/// without the magic or when `head` is too short.
pub fn erofs_uuid(head: &[u8]) -> Option<String> {
    let magic = head.get(SB..SB + 4)?;
    if u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) != MAGIC {
        return None;
    }
    let u = head.get(UUID_AT..UUID_AT + 16)?;
    Some(crate::util::uuid_text(&crate::util::hex(u)))
}

/// The UUID of the erofs image `path`.
pub fn image_uuid(path: &Path) -> Result<String, DiskInitrdError> {
    let mut head = Vec::with_capacity(UUID_AT + 16);
    fs::File::open(path)
        .and_then(|f| f.take((UUID_AT + 16) as u64).read_to_end(&mut head))
        .map_err(io_err(path))?;
    erofs_uuid(&head).ok_or_else(|| DiskInitrdError::NotErofs {
        path: path.to_owned(),
    })
}

/// The uncompressed newc segment: `usr`, `usr/lib`, `usr/lib/ros` and [`UUID_FILE`] holding
/// `uuid` and a newline, padded to 512 bytes.
pub fn uuid_segment(uuid: &str, epoch: i64) -> io::Result<Vec<u8>> {
    let text = format!("{uuid}\n");
    let mut w = NewcWriter::new(Vec::new(), epoch);
    w.dir("usr", 0o755)?;
    w.dir("usr/lib", 0o755)?;
    w.dir("usr/lib/ros", 0o755)?;
    w.file(UUID_FILE, 0o644, text.len() as u64, &mut text.as_bytes())?;
    Ok(w.finish()?.0)
}

/// What [`build`] did.
#[derive(Debug, Clone)]
pub struct DiskInitrdReport {
    pub outcome: Outcome,
    pub path: PathBuf,
    pub size: u64,
    /// The system image's UUID written into it.
    pub uuid: String,
    /// Size of the uncompressed segment in front.
    pub segment: u64,
}

impl DiskInitrdReport {
    /// `build/out/initrd-disk.img 4.1 MiB (512 B cpio with usr/lib/ros/system.uuid = …, then
    /// the zstd cpio; no system.erofs)`
    pub fn describe(&self, layout: &Layout) -> String {
        format!(
            "{} {} ({} cpio with {UUID_FILE} = {}, then {} zstd; system.erofs goes on a disk)",
            layout.display(&self.path),
            human_size(self.size),
            human_size(self.segment),
            self.uuid,
            human_size(self.size.saturating_sub(self.segment)),
        )
    }
}

/// Builds `build/out/initrd-disk.img` from `system` (for its UUID) and the zstd main cpio
/// `packed`, unless its stamp says the inputs are unchanged. `tool` is the xtask build's hash.
pub fn build(
    layout: &Layout,
    system: &Path,
    packed: &Path,
    epoch: i64,
    tool: &str,
) -> Result<DiskInitrdReport, DiskInitrdError> {
    let out = layout.out().join(OUTPUT);
    let uuid = image_uuid(system)?;
    let segment = uuid_segment(&uuid, epoch).map_err(io_err(&out))?;
    let inputs = inputs_text(&[
        ("format", FORMAT.to_string()),
        ("uuid", uuid.clone()),
        (
            "main.cpio.zst",
            sha256_file(packed).map_err(io_err(packed))?,
        ),
        ("epoch", epoch.to_string()),
        ("xtask", tool.to_owned()),
    ]);
    let stamp = Stamp::new(layout, OUTPUT);
    let mut outcome = Outcome::UpToDate;
    if !stamp.up_to_date(&out, &inputs) {
        stamp.clear()?;
        let tmp = out.with_extension("tmp");
        let write = || -> io::Result<()> {
            let mut w = io::BufWriter::new(fs::File::create(&tmp)?);
            w.write_all(&segment)?;
            io::copy(&mut fs::File::open(packed)?, &mut w)?;
            w.flush()?;
            drop(w);
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
            fs::rename(&tmp, &out)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&out)(e));
        }
        stamp.write(&inputs)?;
        outcome = Outcome::Built;
    }
    let size = fs::metadata(&out).map_err(io_err(&out))?.len();
    Ok(DiskInitrdReport {
        outcome,
        path: out,
        size,
        uuid,
        segment: segment.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(uuid: [u8; 16]) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[1024..1028].copy_from_slice(&MAGIC.to_le_bytes());
        b[1024 + 48..1024 + 64].copy_from_slice(&uuid);
        b
    }

    #[test]
    fn uuid_is_read_at_1024_plus_48_after_the_magic() {
        let b = superblock([
            0xde, 0xad, 0xbe, 0xef, 0, 1, 0x42, 2, 0x83, 4, 5, 6, 7, 8, 9, 0xaa,
        ]);
        assert_eq!(
            erofs_uuid(&b).as_deref(),
            Some("deadbeef-0001-4202-8304-0506070809aa")
        );
        assert_eq!(erofs_uuid(&b[..1024 + 63]), None, "truncated");
        let mut no_magic = b.clone();
        no_magic[1027] = 0;
        assert_eq!(erofs_uuid(&no_magic), None);
        assert_eq!(erofs_uuid(&[]), None);
    }

    #[test]
    fn uuid_of_a_real_image_is_the_one_given_to_mkfs_erofs() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("f"), b"x").unwrap();
        let img = d.path().join("s.erofs");
        let uuid = crate::system::uuid_from("sysdisk");
        crate::system::mkfs_erofs(&tree, &img, 0, &uuid).unwrap();
        assert_eq!(image_uuid(&img).unwrap(), uuid);
        let e = image_uuid(&tree.join("f")).unwrap_err();
        assert!(matches!(e, DiskInitrdError::NotErofs { .. }), "{e}");
    }

    #[test]
    fn the_segment_holds_only_the_uuid_file_and_is_reproducible() {
        let uuid = "0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        let seg = uuid_segment(uuid, 1_700_000_000).unwrap();
        assert_eq!(seg, uuid_segment(uuid, 1_700_000_000).unwrap());
        assert_eq!(seg.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap();
        crate::cpio::extract_with_gnu_cpio(&seg, dir.path());
        assert_eq!(
            fs::read_to_string(dir.path().join(UUID_FILE)).unwrap(),
            format!("{uuid}\n")
        );
        let mut names: Vec<String> = walk(dir.path());
        names.sort();
        assert_eq!(
            names,
            ["usr", "usr/lib", "usr/lib/ros", "usr/lib/ros/system.uuid"]
        );
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if p.is_dir() {
                    todo.push(p);
                }
            }
        }
        out
    }

    #[test]
    fn build_is_incremental_and_leaves_the_main_cpio_whole_after_the_segment() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path());
        fs::create_dir_all(layout.out()).unwrap();
        let system = d.path().join("system.erofs");
        fs::write(&system, superblock([7; 16])).unwrap();
        let packed = d.path().join("main.cpio.zst");
        fs::write(&packed, b"(zstd bytes)").unwrap();
        let r = build(&layout, &system, &packed, 0, "t").unwrap();
        assert_eq!(r.outcome, Outcome::Built);
        assert_eq!(r.uuid, "07070707-0707-0707-0707-070707070707");
        let bytes = fs::read(&r.path).unwrap();
        assert_eq!(bytes.len() as u64, r.size);
        assert_eq!(&bytes[r.segment as usize..], b"(zstd bytes)");
        assert!(!bytes.windows(12).any(|w| w == b"system.erofs"));
        let again = build(&layout, &system, &packed, 0, "t").unwrap();
        assert_eq!(again.outcome, Outcome::UpToDate);
        fs::write(&packed, b"(other zstd bytes)").unwrap();
        assert_eq!(
            build(&layout, &system, &packed, 0, "t").unwrap().outcome,
            Outcome::Built
        );
    }
}
