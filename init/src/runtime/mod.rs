//! The container runtime side of ros: OCI specs now; the containerd client (images, tasks,
//! logs) arrives with the containerd issue.

pub mod spec;
