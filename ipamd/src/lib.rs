//! ipamd: the per-node daemon that keeps a warm pool of VPC addresses on the instance's ENIs
//! and hands them to the vpc-cni plugin over gRPC.

pub mod checkpoint;
pub mod config;
pub mod datastore;
pub mod names;
pub mod pool;
