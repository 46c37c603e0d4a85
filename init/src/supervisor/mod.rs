//! Supervision of PID 1's children: the single reaper and the shells PID 1 runs itself.
//! (The service graph and restart policy arrive with the containerd issue.)

pub mod graph;
pub mod policy;
pub mod reaper;
pub mod shell;
