//! api: the admin API of the running node (DESIGN.md, "API and CLI").

/// The generated gRPC messages, clients and servers of `proto/ros/v1/api.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("ros.v1");
}
