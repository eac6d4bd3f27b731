//! Rebuilding allocations at start-up from the checkpoint and the node's own plumbing.
//!
//! The checkpoint alone can be stale (pods deleted while ipamd was down) or lost; the host
//! alone cannot name the CNI key. Each checkpoint entry is checked against the host veths as
//! aws-node does, and any pod route the checkpoint does not know is adopted, so no address a
//! live pod uses is ever handed out again.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use crate::checkpoint::{self, CheckpointAllocation, CheckpointFile};
use crate::datastore::{Key, PodMeta, Restored};
use crate::host::PodHostState;
use crate::names;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePlan {
    /// Allocations to re-attach.
    pub restored: Vec<Restored>,
    /// Checkpoint entries whose pod is gone.
    pub stale: Vec<Restored>,
    /// Addresses whose 512/1536 rules belong to no live pod and must go.
    pub stale_rule_ips: BTreeSet<Ipv4Addr>,
    /// Recently released addresses still to cool down.
    pub released: Vec<(Ipv4Addr, SystemTime)>,
}

pub fn plan(
    checkpoint: Option<&CheckpointFile>,
    host: &PodHostState,
    now: SystemTime,
) -> RestorePlan {
    let mut plan = RestorePlan::default();
    for entry in checkpoint
        .map(|c| c.allocations.as_slice())
        .unwrap_or_default()
    {
        let Some(restored) = from_checkpoint(entry) else {
            continue;
        };
        if is_alive(&restored, host) {
            plan.restored.push(restored);
        } else {
            plan.stale.push(restored);
        }
    }

    let known: BTreeSet<Ipv4Addr> = plan.restored.iter().map(|r| r.ip).collect();
    for route in host.routes.iter().filter(|r| !known.contains(&r.ip)) {
        plan.restored
            .push(Restored::from_host(route.ip, &route.hash, now));
    }

    let live: BTreeSet<Ipv4Addr> = plan.restored.iter().map(|r| r.ip).collect();
    plan.stale_rule_ips = host.rule_ips.difference(&live).copied().collect();
    plan.released = checkpoint
        .map(|c| c.recently_released.iter())
        .into_iter()
        .flatten()
        .filter(|r| !live.contains(&r.ipv4))
        .map(|r| (r.ipv4, checkpoint::from_unix_nanos(r.release_timestamp)))
        .collect();
    plan
}

fn from_checkpoint(entry: &CheckpointAllocation) -> Option<Restored> {
    Some(Restored {
        key: Key::new(&entry.network_name, &entry.container_id, &entry.if_name),
        ip: entry.ipv4?,
        meta: PodMeta {
            namespace: entry.metadata.pod_namespace.clone(),
            name: entry.metadata.pod_name.clone(),
            interfaces_count: entry.metadata.interfaces_count,
        },
        assigned_at: checkpoint::from_unix_nanos(entry.allocation_timestamp),
        host_veth_hash: entry.host_veth_hash.clone(),
    })
}

/// A pod is alive while a host link carries its hash. Entries that name no pod cannot be
/// checked and are kept, as aws-node keeps them.
fn is_alive(r: &Restored, host: &PodHostState) -> bool {
    let hash = match (&r.host_veth_hash, r.meta.name.is_empty()) {
        (Some(hash), _) => hash.clone(),
        (None, false) => names::pod_hash(&r.meta.namespace, &r.meta.name),
        (None, true) => return true,
    };
    host.has_veth_for(&hash)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::checkpoint::{CheckpointMetadata, ReleasedAddress};
    use crate::host::PodRoute;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn entry(container: &str, ip: &str, pod: &str) -> CheckpointAllocation {
        CheckpointAllocation {
            network_name: "aws-cni".into(),
            container_id: container.into(),
            if_name: "eth0".into(),
            ipv4: Some(ip.parse().unwrap()),
            allocation_timestamp: checkpoint::to_unix_nanos(t(0)),
            metadata: CheckpointMetadata {
                pod_namespace: "ns1".into(),
                pod_name: pod.into(),
                interfaces_count: 1,
            },
            host_veth_hash: None,
        }
    }

    fn veth(pod: &str) -> String {
        format!("eni{}", names::pod_hash("ns1", pod))
    }

    fn route(ip: &str, pod: &str) -> PodRoute {
        PodRoute {
            ip: ip.parse().unwrap(),
            veth: veth(pod),
            hash: names::pod_hash("ns1", pod),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Checkpoint says {A, B}; B was deleted while ipamd was down and C was added by a build
    /// that kept no checkpoint. B's rules go, C is adopted.
    #[test]
    fn stale_entries_are_dropped_and_unknown_pods_adopted() {
        let file = CheckpointFile {
            allocations: vec![
                entry("c-a", "10.0.0.21", "pod-a"),
                entry("c-b", "10.0.0.22", "pod-b"),
            ],
            recently_released: vec![ReleasedAddress {
                ipv4: ip("10.0.0.28"),
                release_timestamp: checkpoint::to_unix_nanos(t(3)),
            }],
            ..CheckpointFile::new()
        };
        let host = PodHostState {
            link_names: vec!["lo".into(), "eth0".into(), veth("pod-a"), veth("pod-c")],
            routes: vec![route("10.0.0.21", "pod-a"), route("10.0.0.23", "pod-c")],
            rule_ips: [ip("10.0.0.21"), ip("10.0.0.22"), ip("10.0.0.23")].into(),
        };
        let plan = plan(Some(&file), &host, t(10));

        let restored: Vec<(String, Ipv4Addr)> = plan
            .restored
            .iter()
            .map(|r| (r.key.container_id.clone(), r.ip))
            .collect();
        assert_eq!(
            restored,
            vec![
                ("c-a".into(), ip("10.0.0.21")),
                ("rebuilt-10.0.0.23".into(), ip("10.0.0.23"))
            ]
        );
        assert_eq!(
            plan.restored[1].host_veth_hash.as_deref(),
            Some(names::pod_hash("ns1", "pod-c").as_str())
        );
        assert_eq!(plan.stale.len(), 1);
        assert_eq!(plan.stale[0].key.container_id, "c-b");
        assert_eq!(plan.stale_rule_ips, [ip("10.0.0.22")].into());
        assert_eq!(plan.released, vec![(ip("10.0.0.28"), t(3))]);
    }

    /// No usable checkpoint: every pod route on the host becomes an allocation.
    #[test]
    fn without_a_checkpoint_the_host_is_the_record() {
        let host = PodHostState {
            link_names: vec![veth("pod-a"), veth("pod-b")],
            routes: vec![route("10.0.0.21", "pod-a"), route("10.0.0.31", "pod-b")],
            rule_ips: [ip("10.0.0.21"), ip("10.0.0.31"), ip("10.0.0.40")].into(),
        };
        let plan = plan(None, &host, t(0));
        let ips: Vec<Ipv4Addr> = plan.restored.iter().map(|r| r.ip).collect();
        assert_eq!(ips, vec![ip("10.0.0.21"), ip("10.0.0.31")]);
        assert!(plan.restored.iter().all(|r| r.key.is_rebuilt()));
        assert_eq!(plan.stale_rule_ips, [ip("10.0.0.40")].into());
    }

    #[test]
    fn entries_without_a_pod_name_are_kept() {
        let mut anonymous = entry("c-x", "10.0.0.50", "");
        anonymous.metadata = CheckpointMetadata::default();
        let file = CheckpointFile {
            allocations: vec![anonymous],
            ..CheckpointFile::new()
        };
        let plan = plan(Some(&file), &PodHostState::default(), t(0));
        assert_eq!(plan.restored.len(), 1);
    }

    #[test]
    fn a_released_address_now_in_use_is_not_cooled() {
        let file = CheckpointFile {
            recently_released: vec![ReleasedAddress {
                ipv4: ip("10.0.0.21"),
                release_timestamp: 0,
            }],
            ..CheckpointFile::new()
        };
        let host = PodHostState {
            link_names: vec![veth("pod-a")],
            routes: vec![route("10.0.0.21", "pod-a")],
            ..Default::default()
        };
        assert!(plan(Some(&file), &host, t(0)).released.is_empty());
    }
}
