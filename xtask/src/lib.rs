//! Library half of `cargo xtask`: reproducible image assembly from pinned Debian trixie packages.
//!
//! Data flows one way: `lock` (what to use) → `fetch` (through the isolated `apt`, into the
//! sha256-keyed cache, extracted once) → `oci` (the system service images' OCI archives),
//! `system` (containerd, runc and their `elf` library closure, resolved in the packages' merged
//! `tree`, plus those archives, packed as `system.erofs`), `modules` and `assemble` (the kernel and
//! the initramfs: a `cpio` segment holding `system.erofs`, then the zstd one) in `build/out/`;
//! `diskinitrd` makes `initrd-disk.img`, the same zstd cpio after a segment naming only the
//! system image's UUID (the image then comes from a disk).
//! `hostctr` runs the image's containerd on the build host for integration tests; `baseline`
//! builds the Debian trixie + systemd + containerd image ros is benchmarked against. Every path is
//! passed in (see `layout`), so tests can point each layer at a temporary directory. Nothing here
//! prints or uses `anyhow`; `main.rs` does both.

pub mod apt;
pub mod assemble;
pub mod baseline;
pub mod cpio;
pub mod diskinitrd;
pub mod elf;
pub mod fetch;
pub mod hostctr;
pub mod layout;
pub mod lock;
pub mod modules;
pub mod oci;
pub mod system;
pub mod tree;
pub mod util;
