//! The multi-call binary: PID 1 (or argv[0] `init`) boots the machine; anything else is the
//! `ros` admin CLI, except as `containerd-shim-ros-v2` (the shared-shim runtime containerd runs).
//! Nothing but dispatch lives here.

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == ros::runtime::shared_shim::BINARY {
        std::process::exit(ros::runtime::shared_shim::main());
    }
    if std::process::id() == 1 || name == "init" {
        ros::boot::pid1::main();
    }
    std::process::exit(ros::cli::main());
}
