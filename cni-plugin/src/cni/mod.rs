//! The CNI protocol: environment, arguments, network config, versions, results and replies.

pub mod args;
pub mod env;
pub mod netconf;
pub mod reply;
pub mod result;
pub mod version;

pub use args::PodArgs;
pub use env::{CniEnv, Command};
pub use netconf::NetConf;
pub use result::CniResult;
pub use version::Version;
