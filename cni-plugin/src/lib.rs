//! The vpc-cni plugin as a library: CNI types, netlink plumbing and the ipamd client.
