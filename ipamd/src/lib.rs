//! ipamd: the per-node daemon that keeps a warm pool of VPC addresses on the instance's ENIs
//! and hands them to the vpc-cni plugin over gRPC.

pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod datastore;
pub mod ec2;
pub mod firewall;
pub mod host;
pub mod imds;
pub mod install;
pub mod introspection;
pub mod keys;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod names;
pub mod node;
pub mod node_init;
pub mod pool;
pub mod probe;
pub mod restore;
pub mod rpc;
pub mod sgp;
pub mod sweep;

/// An error with its causes as one line, `outer: inner: root`.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
