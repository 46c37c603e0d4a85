//! ros: the library side of the multi-call binary. `main.rs` only dispatches on argv[0]/PID;
//! everything else lives here, one module per subsystem (see DESIGN.md, "Repository layout").

pub mod api;
pub mod boot;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod net;
pub mod power;
pub mod runtime;
pub mod storage;
pub mod supervisor;
