//! What a block device (or an image file) carries: ros's own reading of the on-disk signatures
//! that decide whether a disk may be formatted, and the ext2/3/4 label and UUID that find the
//! state disk by `LABEL=`/`UUID=` without udev.
//!
//! Owns: [`probe`], which reads the first and the last MiB of the device (the regions where
//! every partition table, filesystem, RAID and LVM signature that blkid knows of sits: a GPT
//! backup header is the last sector, an md 0.90 or 1.0 superblock is within the last 128 KiB)
//! and reports every signature it recognises plus whether those two MiB are entirely zero.
//! A device is blank only when both are true: nothing recognised AND all zero; so a signature
//! ros does not know still makes the device non-blank (the zero test), and the recognised
//! ones name what was found in the refusal.
//!
//! Also reads the UUID of an erofs superblock ([`erofs_uuid`]): PID 1 finds the system image
//! on a disk by it (`boot::sysdisk`).
//!
//! Must not: write anything. Limitations: labels and UUIDs are read for ext2/3/4 only, plus the
//! erofs UUID (the state disk is ext4; other filesystems are found by path).

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of each end of the device is read and must be zero for "blank".
pub const EDGE: u64 = 1024 * 1024;

/// One recognised signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// An ext2/3/4 superblock.
    Ext {
        /// `ext4` when it has extents or a 64-bit layout, `ext3` with a journal, else `ext2`.
        fstype: &'static str,
        /// Volume label (may be empty).
        label: String,
        /// Filesystem UUID, lowercase with dashes.
        uuid: String,
    },
    /// Another filesystem, by its magic.
    Filesystem(&'static str),
    /// An MBR (DOS) partition table or boot sector (0x55AA at byte 510).
    Mbr,
    /// A GPT header at LBA 1.
    Gpt,
    /// A GPT backup header in the last sector.
    BackupGpt,
    /// An md RAID superblock, with its metadata version (`0.90`, `1.0`, `1.1`, `1.2`).
    Md(&'static str),
    /// An LVM physical volume label.
    Lvm,
    /// A swap signature.
    Swap,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Ext { fstype, label, .. } if label.is_empty() => write!(f, "{fstype}"),
            Finding::Ext { fstype, label, .. } => write!(f, "{fstype} (LABEL={label})"),
            Finding::Filesystem(t) if t.starts_with(['a', 'e', 'i', 'o', 'u', 'x']) => {
                write!(f, "an {t} filesystem")
            }
            Finding::Filesystem(t) => write!(f, "a {t} filesystem"),
            Finding::Mbr => write!(f, "an MBR partition table or boot sector"),
            Finding::Gpt => write!(f, "a GPT partition table"),
            Finding::BackupGpt => write!(f, "a backup GPT header at the end"),
            Finding::Md(v) => write!(f, "an md superblock ({v})"),
            Finding::Lvm => write!(f, "an LVM physical volume label"),
            Finding::Swap => write!(f, "a swap signature"),
        }
    }
}

/// What [`probe`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Size in bytes.
    pub size: u64,
    /// Recognised signatures, from the start of the device to its end.
    pub findings: Vec<Finding>,
    /// Whether the first and the last [`EDGE`] bytes are all zero.
    pub zero_edges: bool,
}

impl Probe {
    /// Blank: nothing recognised and both edges zero. Only a blank device is ever formatted.
    pub fn is_blank(&self) -> bool {
        self.findings.is_empty() && self.zero_edges && self.size > 0
    }

    /// The ext filesystem, if that is what it carries.
    pub fn ext(&self) -> Option<(&str, &str, &str)> {
        self.findings.iter().find_map(|f| match f {
            Finding::Ext {
                fstype,
                label,
                uuid,
            } => Some((*fstype, label.as_str(), uuid.as_str())),
            _ => None,
        })
    }

    /// Why the device is not blank, for the refusal (`it carries ext4 (LABEL=DATA)`).
    pub fn why_not_blank(&self) -> String {
        if self.size == 0 {
            return "it is empty (size 0)".to_string();
        }
        if self.findings.is_empty() {
            return "it is not zero in its first or last MiB (unknown data)".to_string();
        }
        let what: Vec<String> = self.findings.iter().map(ToString::to_string).collect();
        format!("it carries {}", what.join(", "))
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn bytes_at(b: &[u8], at: usize, len: usize) -> &[u8] {
    b.get(at..at + len).unwrap_or(&[])
}

fn uuid_text(u: &[u8]) -> String {
    let hex: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    let h = hex.concat();
    if h.len() != 32 {
        return h;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The ext superblock at byte 1024 of `head`.
fn ext(head: &[u8]) -> Option<Finding> {
    let sb = head.get(1024..2048)?;
    if le16(sb, 0x38) != 0xEF53 {
        return None;
    }
    let compat = le32(sb, 0x5C);
    let incompat = le32(sb, 0x60);
    let fstype = if incompat & (0x40 | 0x80 | 0x200) != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    };
    let label_raw = bytes_at(sb, 0x78, 16);
    let end = label_raw.iter().position(|b| *b == 0).unwrap_or(16);
    Some(Finding::Ext {
        fstype,
        label: String::from_utf8_lossy(&label_raw[..end.min(label_raw.len())]).into_owned(),
        uuid: uuid_text(bytes_at(sb, 0x68, 16)),
    })
}

/// Where an erofs superblock starts (`EROFS_SUPER_OFFSET`, erofs-utils `include/erofs_fs.h`).
pub const EROFS_SB_OFFSET: usize = 1024;
/// `EROFS_SUPER_MAGIC_V1`, little-endian at [`EROFS_SB_OFFSET`].
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// Offset of `uuid[16]` in `struct erofs_super_block` (after magic, checksum, feature_compat,
/// blkszbits, sb_extslots, root_nid, inos, build_time, build_time_nsec, blocks,
/// meta_blkaddr, xattr_blkaddr).
const EROFS_UUID_AT: usize = 48;
/// How many bytes of a device [`erofs_uuid`] needs.
pub const EROFS_HEAD: usize = EROFS_SB_OFFSET + EROFS_UUID_AT + 16;

/// The UUID (lowercase with dashes) of the erofs filesystem whose superblock is in `head` (the
/// first [`EROFS_HEAD`] or more bytes of a device), or `None` when there is no erofs magic.
pub fn erofs_uuid(head: &[u8]) -> Option<String> {
    if head.len() < EROFS_HEAD || le32(head, EROFS_SB_OFFSET) != EROFS_MAGIC {
        return None;
    }
    Some(uuid_text(bytes_at(
        head,
        EROFS_SB_OFFSET + EROFS_UUID_AT,
        16,
    )))
}

const MD_MAGIC: u32 = 0xa92b_4efc;

/// Finds every recognised signature in `head` (the first [`EDGE`] bytes, or fewer for a small
/// device) and `tail` (the last ones; `tail_start` is its offset in the device).
pub fn findings(head: &[u8], tail: &[u8], tail_start: u64, size: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(ext(head));
    if bytes_at(head, 0, 4) == b"XFSB" {
        out.push(Finding::Filesystem("xfs"));
    }
    if bytes_at(head, 0x10040, 8) == b"_BHRfS_M" {
        out.push(Finding::Filesystem("btrfs"));
    }
    if bytes_at(head, 0x52, 5) == b"FAT32" || bytes_at(head, 0x36, 5) == b"FAT16" {
        out.push(Finding::Filesystem("vfat"));
    }
    if le32(head, EROFS_SB_OFFSET) == EROFS_MAGIC {
        out.push(Finding::Filesystem("erofs"));
    }
    if bytes_at(head, 0, 4) == [0x68, 0x73, 0x71, 0x73] {
        out.push(Finding::Filesystem("squashfs"));
    }
    if bytes_at(head, 0x8001, 5) == b"CD001" {
        out.push(Finding::Filesystem("iso9660"));
    }
    if bytes_at(head, 510, 2) == [0x55, 0xAA] {
        out.push(Finding::Mbr);
    }
    if bytes_at(head, 512, 8) == b"EFI PART" {
        out.push(Finding::Gpt);
    }
    if (0..4).any(|s| bytes_at(head, s * 512, 8) == b"LABELONE") {
        out.push(Finding::Lvm);
    }
    for page in [4096usize, 8192, 16384, 65536] {
        let at = page - 10;
        let sig = bytes_at(head, at, 10);
        if sig == b"SWAPSPACE2" || sig == b"SWAP-SPACE" {
            out.push(Finding::Swap);
            break;
        }
    }
    if le32(head, 0) == MD_MAGIC && le32(head, 4) == 1 {
        out.push(Finding::Md("1.1"));
    }
    if le32(head, 4096) == MD_MAGIC && le32(head, 4100) == 1 {
        out.push(Finding::Md("1.2"));
    }
    // Offsets in the tail, relative to the device.
    let at_tail = |off: u64, len: usize| -> &[u8] {
        match off.checked_sub(tail_start) {
            Some(rel) => usize::try_from(rel).map_or(&[][..], |r| bytes_at(tail, r, len)),
            None => &[],
        }
    };
    if size >= 512 && at_tail(size - 512, 8) == b"EFI PART" && size > 1024 {
        out.push(Finding::BackupGpt);
    }
    // md 1.0: 8 KiB from the end, rounded down to 4 KiB.
    if size >= 8192 {
        let off = (size - 8192) & !4095;
        let sb = at_tail(off, 8);
        if le32(sb, 0) == MD_MAGIC && le32(sb, 4) == 1 {
            out.push(Finding::Md("1.0"));
        }
    }
    // md 0.90: the last 64 KiB-aligned block of 64 KiB.
    if size >= 131072 {
        let off = (size & !65535) - 65536;
        let sb = at_tail(off, 8);
        if le32(sb, 0) == MD_MAGIC && le32(sb, 4) == 0 {
            out.push(Finding::Md("0.90"));
        }
    }
    out
}

/// Reads the first `len` bytes of `path` (fewer when it is smaller): enough for a superblock,
/// without [`probe`]'s two MiB.
pub fn read_head(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(len);
    File::open(path)?.take(len as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Reads the edges of `path` (a block device or an image file) and reports what it carries.
pub fn probe(path: &Path) -> std::io::Result<Probe> {
    let mut f = File::open(path)?;
    let size = f.seek(SeekFrom::End(0))?;
    let head_len = usize::try_from(size.min(EDGE)).unwrap_or(0);
    let mut head = vec![0u8; head_len];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut head)?;
    let tail_start = size.saturating_sub(EDGE);
    let mut tail = vec![0u8; usize::try_from(size - tail_start).unwrap_or(0)];
    f.seek(SeekFrom::Start(tail_start))?;
    f.read_exact(&mut tail)?;
    let zero_edges = head.iter().chain(tail.iter()).all(|b| *b == 0);
    Ok(Probe {
        size,
        findings: findings(&head, &tail, tail_start, size),
        zero_edges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Command;

    fn image(dir: &Path, name: &str, mib: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(mib * 1024 * 1024).unwrap();
        p
    }

    fn write_at(p: &Path, off: u64, data: &[u8]) {
        let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(data).unwrap();
    }

    #[test]
    fn a_zeroed_image_is_blank_and_one_stray_byte_at_the_end_is_not() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path(), "z.img", 8);
        let probe = probe(&p).unwrap();
        assert!(probe.is_blank(), "{probe:?}");
        write_at(&p, 8 * 1024 * 1024 - 3, b"x");
        let probe = super::probe(&p).unwrap();
        assert!(!probe.is_blank());
        assert!(probe.findings.is_empty());
        assert!(probe.why_not_blank().contains("unknown data"));
    }

    #[test]
    fn a_real_ext4_is_named_with_its_label_and_uuid() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path(), "e.img", 16);
        let ok = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "DATA",
                "-U",
                "0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            ])
            .arg(&p)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let probe = probe(&p).unwrap();
        assert_eq!(
            probe.ext(),
            Some(("ext4", "DATA", "0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"))
        );
        assert!(!probe.is_blank());
        assert_eq!(probe.why_not_blank(), "it carries ext4 (LABEL=DATA)");
    }

    #[test]
    fn a_backup_gpt_alone_and_md_superblocks_at_the_end_are_found() {
        let d = tempfile::tempdir().unwrap();
        let size = 16 * 1024 * 1024u64;
        let p = image(d.path(), "g.img", 16);
        write_at(&p, size - 512, b"EFI PART");
        assert_eq!(probe(&p).unwrap().findings, [Finding::BackupGpt]);
        assert_eq!(
            probe(&p).unwrap().why_not_blank(),
            "it carries a backup GPT header at the end"
        );
        let p = image(d.path(), "m.img", 16);
        let mut sb = MD_MAGIC.to_le_bytes().to_vec();
        sb.extend(1u32.to_le_bytes());
        write_at(&p, (size - 8192) & !4095, &sb);
        assert_eq!(probe(&p).unwrap().findings, [Finding::Md("1.0")]);
        let p = image(d.path(), "m09.img", 16);
        let mut sb = MD_MAGIC.to_le_bytes().to_vec();
        sb.extend(0u32.to_le_bytes());
        write_at(&p, (size & !65535) - 65536, &sb);
        assert_eq!(probe(&p).unwrap().findings, [Finding::Md("0.90")]);
    }

    /// A superblock as erofs-utils writes it: magic at 1024, `uuid[16]` at 1024 + 48.
    fn erofs_head(uuid: [u8; 16]) -> Vec<u8> {
        let mut head = vec![0u8; 4096];
        head[1024..1028].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
        head[1024 + 12] = 12; // blkszbits
        head[1024 + 48..1024 + 64].copy_from_slice(&uuid);
        head
    }

    #[test]
    fn erofs_uuid_is_read_from_the_superblock_and_needs_the_magic() {
        let uuid = [
            0x0b, 0x9e, 0x3f, 0x5a, 0x1c, 0x2d, 0x4e, 0x5f, 0x8a, 0x9b, 0x0c, 0x1d, 0x2e, 0x3f,
            0x4a, 0x5b,
        ];
        let head = erofs_head(uuid);
        assert_eq!(
            erofs_uuid(&head).as_deref(),
            Some("0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(erofs_uuid(&head[..EROFS_HEAD]).map(|u| u.len()), Some(36));
        assert_eq!(erofs_uuid(&head[..EROFS_HEAD - 1]), None, "short read");
        let mut other = head.clone();
        other[1024] ^= 1;
        assert_eq!(erofs_uuid(&other), None, "no magic");
        assert_eq!(erofs_uuid(&[0u8; 4096]), None);
    }

    #[test]
    fn a_real_erofs_image_is_not_blank_and_its_uuid_is_read() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("f"), b"system").unwrap();
        let img = d.path().join("s.erofs");
        let ok = Command::new("mkfs.erofs")
            .arg("-U0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
            .arg(&img)
            .arg(&tree)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "mkfs.erofs (erofs-utils) on the host");
        let p = probe(&img).unwrap();
        assert!(!p.is_blank());
        assert_eq!(p.why_not_blank(), "it carries an erofs filesystem");
        let head = read_head(&img, EROFS_HEAD).unwrap();
        assert_eq!(
            erofs_uuid(&head).as_deref(),
            Some("0b9e3f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
        );
    }

    #[test]
    fn partition_tables_lvm_and_a_tiny_device_are_not_blank() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path(), "p.img", 4);
        write_at(&p, 510, &[0x55, 0xAA]);
        write_at(&p, 512, b"EFI PART");
        assert_eq!(probe(&p).unwrap().findings, [Finding::Mbr, Finding::Gpt]);
        let p = image(d.path(), "l.img", 4);
        write_at(&p, 512, b"LABELONE");
        assert_eq!(probe(&p).unwrap().findings, [Finding::Lvm]);
        let p = d.path().join("empty.img");
        File::create(&p).unwrap();
        let probe = probe(&p).unwrap();
        assert!(!probe.is_blank());
        assert_eq!(probe.why_not_blank(), "it is empty (size 0)");
    }
}
