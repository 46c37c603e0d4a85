//! Loop devices: attach a file read-only to a free `/dev/loopN` (`LOOP_CTL_GET_FREE` on
//! `/dev/loop-control`, then `LOOP_CONFIGURE`, Linux ≥ 5.8).
//!
//! Owns the two ioctls and their structs (not in the libc crate; copied from
//! `include/uapi/linux/loop.h`). It never detaches: the device lives as long as its mount
//! (`LO_FLAGS_AUTOCLEAR` releases it when the last user goes — so the caller keeps the
//! [`LoopDevice`] open until it has mounted it).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("loop: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LoopError + 'a {
    move |source| LoopError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// An attached loop device. `LO_FLAGS_AUTOCLEAR` detaches it when its last user goes, so
/// keep this open until the device is mounted.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    _open: File,
}

/// Attaches `file` read-only to a free loop device.
pub fn attach_read_only(file: &Path) -> Result<LoopDevice, LoopError> {
    let backing = File::open(file).map_err(io_err("open", file))?;
    let ctl_path = Path::new("/dev/loop-control");
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open(ctl_path)
        .map_err(io_err("open", ctl_path))?;
    let mut last = None;
    // Another attacher may take the free device between GET_FREE and CONFIGURE (EBUSY): retry.
    for _ in 0..3 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io_err("LOOP_CTL_GET_FREE", ctl_path)(
                std::io::Error::last_os_error(),
            ));
        }
        let dev_path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .open(&dev_path)
            .map_err(io_err("open", &dev_path))?;
        let mut name = [0u8; 64];
        let bytes = file.as_os_str().as_encoded_bytes();
        let len = bytes.len().min(63);
        name[..len].copy_from_slice(&bytes[..len]);
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                lo_file_name: name,
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config` is (repr(C),
        // same layout as the uapi header), and it outlives the call; both fds are open.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config as *const _) };
        if rc == 0 {
            return Ok(LoopDevice {
                path: dev_path,
                _open: dev,
            });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(io_err("LOOP_CONFIGURE", &dev_path)(e));
        }
        last = Some((dev_path, e));
    }
    let (path, e) = last.unwrap_or_else(|| {
        (
            ctl_path.to_path_buf(),
            std::io::Error::from_raw_os_error(libc::EBUSY),
        )
    });
    Err(LoopError::Io {
        what: "LOOP_CONFIGURE",
        path,
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_match_the_uapi_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
