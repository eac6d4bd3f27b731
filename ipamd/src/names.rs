//! Host veth names. The plugin derives them from the pod's namespace and name; ipamd reads
//! them back to tell which pod a host link, and so an address, belongs to.

/// Hex characters of SHA-1("<namespace>.<name>") that end every host veth name.
pub const HASH_LEN: usize = 11;

/// The pod's hash: the host veth name without its prefix.
pub fn pod_hash(namespace: &str, name: &str) -> String {
    vpc_cni::names::host_veth_name("", namespace, name)
}

/// The pod hash of a link that is a host veth with this prefix, or `None`.
pub fn veth_hash<'a>(link: &'a str, prefix: &str) -> Option<&'a str> {
    let hash = link.strip_prefix(prefix)?;
    let is_hash = hash.len() == HASH_LEN && hash.bytes().all(|b| b.is_ascii_hexdigit());
    is_hash.then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_the_plugin_veth_name_without_prefix() {
        let veth = vpc_cni::names::host_veth_name("eni", "ns1", "pod-a");
        assert_eq!(pod_hash("ns1", "pod-a").len(), HASH_LEN);
        assert_eq!(veth, format!("eni{}", pod_hash("ns1", "pod-a")));
    }

    #[test]
    fn recognises_only_prefix_plus_hash() {
        let name = vpc_cni::names::host_veth_name("eni", "ns1", "pod-a");
        assert_eq!(
            veth_hash(&name, "eni"),
            Some(pod_hash("ns1", "pod-a").as_str())
        );
        assert_eq!(veth_hash("eth0", "eni"), None);
        assert_eq!(veth_hash("eni123", "eni"), None);
        assert_eq!(veth_hash("enizzzzzzzzzzz", "eni"), None);
    }
}
