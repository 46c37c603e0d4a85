//! Library half of `cargo xtask`: reproducible image assembly from pinned Debian trixie packages.
//!
//! Data flows one way: `lock` (what to use) → `fetch` (through the isolated `apt`, into the
//! sha256-keyed cache, extracted once) → `modules` and `assemble` (the kernel and initramfs in
//! `build/out/`). Every path is passed in (see `layout`), so tests can point each layer at a
//! temporary directory. Nothing here prints or uses `anyhow`; `main.rs` does both.

pub mod apt;
pub mod assemble;
pub mod fetch;
pub mod layout;
pub mod lock;
pub mod modules;
pub mod util;
