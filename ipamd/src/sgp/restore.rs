//! Rebuilding the branch pool at start-up from what EC2 says is on the trunk and what the
//! checkpoint says each branch was doing.
//!
//! EC2 is the record of what exists: every VLAN id associated with the trunk stays taken,
//! whoever owns the branch, so a restart never hands out an id that is still live. The
//! checkpoint is the record of who holds what; an entry whose branch is no longer on the trunk
//! is dropped, and an associated branch no entry names is warm. Branch ENIs ipamd made that
//! never got associated (a crash between create and associate) are to be deleted.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::pool::{holder_from_record, Branch, BranchPool, BranchState};
use super::warm::GroupSet;
use crate::checkpoint::{self, CheckpointBranch};
use crate::ec2::{EniDescription, TrunkAssociation};

/// Description of the branch ENIs ipamd creates, as the VPC Resource Controller names its own.
pub const BRANCH_DESCRIPTION: &str = "aws-k8s-branch-eni";

/// What EC2 and the checkpoint say at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub branch_limit: u32,
    pub associations: &'a [TrunkAssociation],
    /// ENIs tagged with this instance's id (the trunk among them).
    pub tagged: &'a [EniDescription],
    pub records: &'a [CheckpointBranch],
    /// Subnets whose CIDR ipamd knows, by id.
    pub subnets: &'a BTreeMap<String, Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    pub pool: BranchPool,
    /// Branch ENIs of this node that are on no trunk.
    pub to_delete: Vec<String>,
    /// Checkpoint entries whose branch is not on the trunk any more.
    pub dropped: Vec<CheckpointBranch>,
    /// Associations whose branch ipamd cannot use (not its own, or in an unknown subnet).
    pub foreign: Vec<TrunkAssociation>,
}

pub fn rebuild(found: &Found) -> Rebuilt {
    let mut pool = BranchPool::new(found.branch_limit);
    let by_id: BTreeMap<&str, &EniDescription> =
        found.tagged.iter().map(|e| (e.id.as_str(), e)).collect();
    let records: BTreeMap<&str, &CheckpointBranch> = found
        .records
        .iter()
        .map(|r| (r.eni_id.as_str(), r))
        .collect();
    let mut foreign = Vec::new();
    for a in found.associations {
        let eni = by_id.get(a.branch_eni.as_str());
        let subnet = eni.and_then(|e| found.subnets.get(&e.subnet_id));
        match (eni, subnet) {
            (Some(eni), Some(subnet)) => {
                let record = records.get(eni.id.as_str()).copied();
                pool.insert(branch(a, eni, *subnet, record));
            }
            _ => {
                pool.mark_foreign([a.vlan_id]);
                foreign.push(a.clone());
            }
        }
    }
    let to_delete = unassociated_branches(found.tagged, found.associations);
    let dropped = found
        .records
        .iter()
        .filter(|r| pool.get(&r.eni_id).is_none())
        .cloned()
        .collect();
    Rebuilt {
        pool,
        to_delete,
        dropped,
        foreign,
    }
}

/// The branch ENIs among `tagged` (this node's ENIs) that are neither attached nor on the
/// trunk: creations whose association failed and whose deletion failed too.
pub fn unassociated_branches(
    tagged: &[EniDescription],
    associations: &[TrunkAssociation],
) -> Vec<String> {
    let associated: Vec<&str> = associations.iter().map(|a| a.branch_eni.as_str()).collect();
    tagged
        .iter()
        .filter(|e| e.description == BRANCH_DESCRIPTION && e.attachment.is_none())
        .filter(|e| !associated.contains(&e.id.as_str()))
        .map(|e| e.id.clone())
        .collect()
}

/// A branch with the state its checkpoint entry gives it (warm without one). The VLAN id and
/// groups come from EC2, which is right even when the checkpoint is stale.
fn branch(
    a: &TrunkAssociation,
    eni: &EniDescription,
    subnet: Ipv4Net,
    record: Option<&CheckpointBranch>,
) -> Branch {
    let state = match record {
        Some(r) if r.pod.is_some() => {
            BranchState::Held(holder_from_record(r.pod.as_ref().expect("checked")))
        }
        Some(CheckpointBranch {
            release_timestamp: Some(at),
            ..
        }) => BranchState::Cooling(checkpoint::from_unix_nanos(*at)),
        _ => BranchState::Warm,
    };
    Branch {
        eni_id: eni.id.clone(),
        mac: eni.mac.clone(),
        ip: eni.primary_ip,
        subnet,
        vlan_id: a.vlan_id,
        association_id: a.id.clone(),
        groups: GroupSet::new(eni.security_groups.iter().cloned()),
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointBranchPod;
    use crate::ec2::EniAttachment;

    const TRUNK: &str = "eni-trunk";

    fn eni(id: &str, groups: &[&str]) -> EniDescription {
        let n = id.len() as u8;
        EniDescription {
            id: id.into(),
            mac: format!("02:00:00:00:00:{n:02x}"),
            subnet_id: "subnet-node".into(),
            primary_ip: std::net::Ipv4Addr::new(10, 0, 0, 100 + n),
            secondary_ips: vec![],
            prefixes: vec![],
            attachment: None,
            interface_type: "branch".into(),
            description: BRANCH_DESCRIPTION.into(),
            tags: BTreeMap::new(),
            security_groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn assoc(branch: &str, vlan_id: u16) -> TrunkAssociation {
        TrunkAssociation {
            id: format!("trunk-assoc-{vlan_id}"),
            branch_eni: branch.into(),
            trunk_eni: TRUNK.into(),
            vlan_id,
        }
    }

    fn record(
        eni: &str,
        vlan_id: u16,
        pod: Option<&str>,
        released: Option<i64>,
    ) -> CheckpointBranch {
        CheckpointBranch {
            eni_id: eni.into(),
            vlan_id,
            mac: "02:00:00:00:00:99".into(),
            ipv4: "10.0.0.99".parse().unwrap(),
            subnet_cidr: "10.0.0.0/24".parse().unwrap(),
            association_id: String::new(),
            security_groups: vec!["sg-stale".into()],
            pod: pod.map(|name| CheckpointBranchPod {
                network_name: "aws-cni".into(),
                container_id: format!("c-{name}"),
                if_name: "eth0".into(),
                namespace: "shop".into(),
                name: name.into(),
                uid: format!("uid-{name}"),
                allocation_timestamp: 1,
            }),
            release_timestamp: released,
        }
    }

    fn subnets() -> BTreeMap<String, Ipv4Net> {
        BTreeMap::from([("subnet-node".to_string(), "10.0.0.0/24".parse().unwrap())])
    }

    #[test]
    fn held_cooling_and_unclaimed_branches_come_back() {
        let tagged = [
            eni("eni-held", &["sg-catalog"]),
            eni("eni-cool", &["sg-node"]),
            eni("eni-free", &["sg-node"]),
        ];
        let associations = [
            assoc("eni-held", 3),
            assoc("eni-cool", 1),
            assoc("eni-free", 5),
        ];
        let records = [
            record("eni-held", 3, Some("catalog-0"), None),
            record("eni-cool", 1, None, Some(1_700_000_000_000_000_000)),
            record("eni-gone", 2, Some("old-0"), None),
        ];
        let subnets = subnets();
        let r = rebuild(&Found {
            branch_limit: 9,
            associations: &associations,
            tagged: &tagged,
            records: &records,
            subnets: &subnets,
        });
        let held = r.pool.get("eni-held").unwrap();
        assert_eq!(held.holder().unwrap().name, "catalog-0");
        assert_eq!(held.vlan_id, 3);
        assert_eq!(
            held.groups,
            GroupSet::new(["sg-catalog"]),
            "groups from ec2"
        );
        assert_eq!(r.pool.get("eni-cool").unwrap().state.name(), "cooling");
        assert_eq!(r.pool.get("eni-free").unwrap().state, BranchState::Warm);
        assert_eq!(r.dropped.len(), 1);
        assert_eq!(r.dropped[0].eni_id, "eni-gone");
        assert_eq!(r.pool.vlans_in_use(), [1, 3, 5]);
    }

    #[test]
    fn every_associated_vlan_stays_taken() {
        // A branch that is not ours, and one in a subnet ipamd does not know.
        let mut elsewhere = eni("eni-other-subnet", &["sg-x"]);
        elsewhere.subnet_id = "subnet-far".into();
        let tagged = [elsewhere];
        let associations = [assoc("eni-stranger", 1), assoc("eni-other-subnet", 2)];
        let subnets = subnets();
        let mut r = rebuild(&Found {
            branch_limit: 3,
            associations: &associations,
            tagged: &tagged,
            records: &[],
            subnets: &subnets,
        });
        assert_eq!(r.foreign.len(), 2);
        assert_eq!(r.pool.branches().count(), 0);
        assert_eq!(r.pool.reserve_vlan(), Ok(3));
        assert!(r.pool.reserve_vlan().is_err());
    }

    #[test]
    fn unassociated_branches_of_this_node_are_deleted() {
        let mut trunk = eni(TRUNK, &["sg-node"]);
        trunk.description = "aws-k8s-trunk-eni".into();
        trunk.attachment = Some(EniAttachment {
            id: "eni-attach-1".into(),
            device_index: 2,
            network_card: 0,
            instance_id: Some("i-1".into()),
        });
        let mut secondary = eni("eni-secondary", &["sg-node"]);
        secondary.description = "aws-K8S-i-1".into();
        let tagged = [trunk, secondary, eni("eni-leaked", &["sg-node"])];
        let subnets = subnets();
        let r = rebuild(&Found {
            branch_limit: 9,
            associations: &[],
            tagged: &tagged,
            records: &[],
            subnets: &subnets,
        });
        assert_eq!(r.to_delete, ["eni-leaked"]);
    }
}
