//! The vpc-cni plugin as a library: CNI protocol types, netlink plumbing, the ipamd client
//! and one function per CNI verb. The `vpc-cni` binary is a thin shell around [`run`].

pub mod cni;
pub mod names;
pub mod netlink;
pub mod plumbing;
