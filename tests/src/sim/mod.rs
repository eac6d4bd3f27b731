//! vpc-sim: one AWS VPC on this machine. An EC2 Query API and IMDSv2 that real SDKs talk to,
//! backed by a model that enforces EC2's limits, and a datapath of network namespaces and veth
//! pairs that delivers packets the way the VPC does.

pub mod client;
pub mod control;
pub mod ec2;
pub mod fabric;
pub mod firewall;
pub mod imds;
pub mod info;
pub mod netns;
pub mod scenario;
pub mod secgroup;
pub mod server;
pub mod state;
pub mod tcp;

pub use info::{InstanceInfo, OutsideInfo, SimInfo};
pub use server::{run, Options, SimError};
