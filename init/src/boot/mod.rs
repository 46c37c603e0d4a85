//! Boot: everything PID 1 does from the kernel's hand-over to `ready` (DESIGN.md boot steps 1–6
//! and 9), then the serve loop of step 10, and the recovery shell on a fatal error.
//!
//! The submodules each own one piece (mounts, switch_root, cmdline, modules, logging, the syscall
//! seam); `pid1` sequences them. Data flows one way: cmdline + config layers → effective config →
//! the kernel (modules, sysctl, hostname).

pub mod api_host;
pub mod cmdline;
pub mod config_sources;
pub mod kmsg;
pub mod loopdev;
pub mod modules;
pub mod mounts;
pub mod pid1;
pub mod state_storage;
pub mod switch_root;
pub mod sys;
pub mod sysdisk;
pub mod sysimage;
