//! A minimal writer of uncompressed `newc` cpio archives, for the first segment of
//! `initrd.img`: the kernel unpacks an uncompressed archive followed by a compressed one (the
//! early-microcode layout), so big, already-compressed files (the erofs system image) go in
//! front, uncompressed, and are not compressed twice.
//!
//! Owns the byte format only: every entry is owned by root, has the given mtime, gets an inode
//! number in writing order, and the archive ends with `TRAILER!!!` padded to 512 bytes (as GNU
//! cpio does), so the compressed segment that follows starts on a block boundary. It must not
//! decide what goes in the archive. Limitation: files up to 4 GiB (the format's size field).

use std::io::{self, Read, Write};

/// Pads the archive to a multiple of this, as GNU cpio's default block size does.
pub const BLOCK: u64 = 512;

/// A newc archive being written to `W`.
pub struct NewcWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
    mtime: u32,
}

fn pad4(n: u64) -> usize {
    ((4 - (n % 4)) % 4) as usize
}

impl<W: Write> NewcWriter<W> {
    /// A writer giving every entry `mtime` (seconds since the epoch; clamped into the format).
    pub fn new(out: W, mtime: i64) -> Self {
        NewcWriter {
            out,
            ino: 0,
            written: 0,
            mtime: u32::try_from(mtime.max(0)).unwrap_or(u32::MAX),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: u64) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {size} bytes is too large for a newc cpio entry"),
            )
        })?;
        if name.is_empty() || name.starts_with('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry name `{name}` must be relative and non-empty"),
            ));
        }
        self.ino += 1;
        let namesize = name.len() as u64 + 1;
        let head = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            if name == "TRAILER!!!" { 0 } else { self.ino },
            mode,
            0, // uid
            0, // gid
            nlink,
            if name == "TRAILER!!!" { 0 } else { self.mtime },
            size,
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            namesize,
            0, // check
        );
        self.put(head.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        let pad = pad4(110 + namesize);
        self.put(&[0; 3][..pad])
    }

    /// A directory entry (`mode` holds the permission bits).
    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.header(name, 0o040000 | (mode & 0o7777), 2, 0)
    }

    /// A regular file of `size` bytes read from `data`.
    pub fn file(
        &mut self,
        name: &str,
        mode: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        self.header(name, 0o100000 | (mode & 0o7777), 1, size)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        self.written += copied;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {size} bytes, read {copied}"),
            ));
        }
        let pad = pad4(size);
        self.put(&[0; 3][..pad])
    }

    /// Writes the trailer, pads to [`BLOCK`] and returns the output and the archive's size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.header("TRAILER!!!", 0, 1, 0)?;
        let rem = self.written % BLOCK;
        if rem != 0 {
            let zeros = vec![0u8; (BLOCK - rem) as usize];
            self.put(&zeros)?;
        }
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

/// Unpacks `archive` into `dir` with GNU cpio (the reference reader for the tests).
#[cfg(test)]
pub fn extract_with_gnu_cpio(archive: &[u8], dir: &std::path::Path) {
    use std::process::{Command, Stdio};
    let mut child = Command::new("cpio")
        .args(["-idm", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(archive).unwrap();
    assert!(child.wait().unwrap().success());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_cpio_reads_what_we_write() {
        let mut w = NewcWriter::new(Vec::new(), 0);
        w.dir("usr", 0o755).unwrap();
        w.dir("usr/lib", 0o755).unwrap();
        w.file("usr/lib/x", 0o644, 5, &mut &b"hello"[..]).unwrap();
        let (bytes, size) = w.finish().unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(size % BLOCK, 0);
        let dir = tempfile::tempdir().unwrap();
        extract_with_gnu_cpio(&bytes, dir.path());
        assert_eq!(
            std::fs::read(dir.path().join("usr/lib/x")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn short_data_and_absolute_names_are_refused() {
        let mut w = NewcWriter::new(Vec::new(), 0);
        assert!(w.file("x", 0o644, 10, &mut &b"abc"[..]).is_err());
        let mut w = NewcWriter::new(Vec::new(), 0);
        assert!(w.dir("/abs", 0o755).is_err());
    }
}
