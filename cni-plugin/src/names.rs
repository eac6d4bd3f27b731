//! Interface names derived from the pod identity, as aws-node derives them, so a node moved
//! between the two implementations keeps recognising its own links.

use sha1::{Digest, Sha1};

use crate::cni::netconf::SgEnforcingMode;

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
pub fn vlan_link_name(vlan_id: u16) -> String {
    format!("vlan.eth.{vlan_id}")
}

/// Host veth prefix of a branch-ENI pod. Strict mode uses "vlan", which matches neither the
/// connmark nor the SNAT exemptions keyed on the configured prefix, so the pod's traffic is
/// never source-NATed; standard mode uses the configured prefix and so gets SNAT like any pod.
pub fn branch_veth_prefix(mode: SgEnforcingMode, configured: &str) -> &str {
    match mode {
        SgEnforcingMode::Strict => BRANCH_VETH_PREFIX,
        SgEnforcingMode::Standard => configured,
    }
}

/// The mode a branch-ENI pod was wired in, read back from its host veth name. Unambiguous:
/// a configured prefix is at most 4 characters and never "vlan", and the hash after it is hex,
/// so no other name starts with "vlan".
pub fn branch_mode_of(host_veth: &str) -> SgEnforcingMode {
    if host_veth.starts_with(BRANCH_VETH_PREFIX) {
        SgEnforcingMode::Strict
    } else {
        SgEnforcingMode::Standard
    }
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
    fn branch_pod_names_follow_the_mode() {
        let strict = branch_veth_prefix(SgEnforcingMode::Strict, "eni");
        let standard = branch_veth_prefix(SgEnforcingMode::Standard, "eni");
        assert_eq!(host_veth_name(strict, "ns1", "api").len(), 15);
        assert!(host_veth_name(strict, "ns1", "api").starts_with("vlan"));
        assert!(host_veth_name(standard, "ns1", "api").starts_with("eni"));
        assert_eq!(vlan_link_name(3), "vlan.eth.3");
        assert_eq!(vlan_link_name(4094), "vlan.eth.4094");
    }

    #[test]
    fn branch_mode_is_read_back_from_the_host_veth() {
        for (prefix, mode) in [
            ("eni", SgEnforcingMode::Standard),
            ("vla", SgEnforcingMode::Standard),
            ("v", SgEnforcingMode::Standard),
        ] {
            for pod in ["a", "b", "c", "api", "web-0"] {
                let name = host_veth_name(branch_veth_prefix(mode, prefix), "ns", pod);
                assert_eq!(branch_mode_of(&name), mode, "{name}");
            }
        }
        let strict = host_veth_name(BRANCH_VETH_PREFIX, "ns", "api");
        assert_eq!(branch_mode_of(&strict), SgEnforcingMode::Strict);
    }

    #[test]
    fn pod_identity_falls_back_to_attachment_without_pod_name() {
        assert_eq!(pod_identity("ns", "p", "c1", "eth0"), ("ns", "p"));
        assert_eq!(pod_identity("", "", "c1", "eth0"), ("c1", "eth0"));
    }
}
