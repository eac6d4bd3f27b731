//! Harness shared by the integration suites and the demo: a local VPC, ipamd on a simulated
//! node, the plugin run as a runtime runs it, and containerd over CRI.

pub mod bench;
pub mod bins;
pub mod containerd;
pub mod demo;
pub mod introspect;
pub mod ipamd;
pub mod kube;
pub mod loopback;
pub mod netns;
pub mod node;
pub mod plugin;
pub mod probe;
pub mod process;
pub mod rpc;
pub mod sgp_scenario;
pub mod sim;
pub mod uml;
pub mod vpc;
