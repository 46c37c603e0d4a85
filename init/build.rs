//! Generates the admin API's gRPC code (`proto/ros/v1/api.proto`) with tonic-prost-build.
//! Needs `protoc` (Debian `protobuf-compiler`), as containerd-client already does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Rows and replies print as JSON for `-o json`.
        .type_attribute(".ros.v1", "#[derive(serde::Serialize)]")
        .compile_protos(&["proto/ros/v1/api.proto"], &["proto"])?;
    Ok(())
}
