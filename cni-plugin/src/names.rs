//! Interface names derived from the pod identity, as aws-node derives them, so a node moved
//! between the two implementations keeps recognising its own links.

use sha1::{Digest, Sha1};

/// Host veth prefix used when the network config names none.
pub const DEFAULT_VETH_PREFIX: &str = "eni";

/// Prefix of the host veth of a branch-ENI pod in strict mode.
pub const BRANCH_VETH_PREFIX: &str = "vlan";

/// Prefix of the result record that carries the ENI device number (or VLAN id).
pub const RECORD_PREFIX: &str = "dummy";

/// Length of the hash suffix: with a 4-character prefix the name is IFNAMSIZ - 1 = 15 bytes.
const HASH_CHARS: usize = 11;

/// Host-side veth name: prefix + first 11 hex chars of SHA-1("<namespace>.<name>").
pub fn host_veth_name(prefix: &str, namespace: &str, name: &str) -> String {
    format!("{prefix}{}", pod_hash(namespace, name))
}

/// Name of the synthetic result interface that records the ENI device number.
pub fn record_name(namespace: &str, name: &str) -> String {
    format!("{RECORD_PREFIX}{}", pod_hash(namespace, name))
}

/// Name of the VLAN sub-interface a branch-ENI pod uses on the trunk.
pub fn vlan_link_name(vlan_id: u32) -> String {
    format!("vlan.eth.{vlan_id}")
}

fn pod_hash(namespace: &str, name: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{name}").as_bytes());
    let mut hex = hex::encode(digest);
    hex.truncate(HASH_CHARS);
    hex
}

/// The (namespace, name) pair that names a pod's links.
///
/// Runtimes outside Kubernetes send no pod name; hashing "." for all of them would give every
/// such container the same host veth, so the CNI attachment identity stands in for the pod.
pub fn pod_identity<'a>(
    namespace: &'a str,
    name: &'a str,
    container_id: &'a str,
    ifname: &'a str,
) -> (&'a str, &'a str) {
    if namespace.is_empty() && name.is_empty() {
        (container_id, ifname)
    } else {
        (namespace, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_name_is_prefix_and_sha1_of_namespace_dot_name() {
        // `echo -n default.nginx | sha1sum` = c440f455693b69cd...
        let name = host_veth_name("eni", "default", "nginx");
        assert_eq!(name, "enic440f455693");
        assert_eq!(host_veth_name("abcd", "default", "nginx").len(), 15);
    }

    #[test]
    fn record_name_shares_the_hash() {
        let veth = host_veth_name("eni", "ns1", "pod-a");
        let record = record_name("ns1", "pod-a");
        assert_eq!(veth[3..], record[5..]);
    }

    #[test]
    fn pod_identity_falls_back_to_attachment_without_pod_name() {
        assert_eq!(pod_identity("ns", "p", "c1", "eth0"), ("ns", "p"));
        assert_eq!(pod_identity("", "", "c1", "eth0"), ("c1", "eth0"));
    }
}
