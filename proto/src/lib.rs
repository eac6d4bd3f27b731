//! Generated gRPC types for the plugin ↔ ipamd contract (`proto/ipamd.proto`).

#![allow(clippy::all, non_snake_case)]

pub mod rpc {
    tonic::include_proto!("rpc");
}

pub use rpc::*;

/// Version both sides compare on every call; a plugin and a daemon from different builds
/// refuse to talk rather than misread each other.
pub const CONTRACT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where ipamd listens by default, the same path aws-node uses.
pub const DEFAULT_SOCKET: &str = "/var/run/aws-node/ipamd.sock";
