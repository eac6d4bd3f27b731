//! Host veth names, derived from the pod's namespace and name exactly as the plugin derives
//! them, so ipamd can tell which pod a host link belongs to.

use sha1::{Digest, Sha1};

/// Hex characters of SHA-1("<namespace>.<name>") that end every host veth name.
pub const HASH_LEN: usize = 11;

pub fn pod_hash(namespace: &str, name: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{name}").as_bytes());
    let mut hex = hex::encode(digest);
    hex.truncate(HASH_LEN);
    hex
}

pub fn host_veth_name(prefix: &str, namespace: &str, name: &str) -> String {
    format!("{prefix}{}", pod_hash(namespace, name))
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
    fn matches_aws_node_naming() {
        let name = host_veth_name("eni", "default", "nginx");
        assert_eq!(name.len(), 3 + HASH_LEN);
        assert_eq!(
            &name[3..],
            &hex::encode(Sha1::digest(b"default.nginx"))[..HASH_LEN]
        );
        assert!(host_veth_name("abcd", "ns", "pod").len() <= 15);
    }

    #[test]
    fn recognises_only_prefix_plus_hash() {
        let name = host_veth_name("eni", "ns1", "pod-a");
        assert_eq!(
            veth_hash(&name, "eni"),
            Some(pod_hash("ns1", "pod-a").as_str())
        );
        assert_eq!(veth_hash("eth0", "eni"), None);
        assert_eq!(veth_hash("eni123", "eni"), None);
        assert_eq!(veth_hash("enizzzzzzzzzzz", "eni"), None);
    }
}
