//! The branch ENIs on this node's trunk and what each one is doing: warm (ready for a pod),
//! held by a pod, cooling down after its pod left, or busy with an EC2 change. Pure state;
//! the EC2 calls around it happen elsewhere, between a `begin` and a `finish` here, so no
//! branch is ever handed to two pods or changed while a pod takes it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;

use super::annotation::BranchEni;
use super::vlan::{VlanError, VlanTable};
use super::warm::{GroupSet, WarmBranch};
use crate::checkpoint::{self, CheckpointBranch, CheckpointBranchPod};
use crate::datastore::Key;

/// The pod a branch serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub key: Key,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub since: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchState {
    Warm,
    Held(Holder),
    /// Released at this time; no pod gets it before the cooldown has passed.
    Cooling(SystemTime),
    /// An EC2 change (new groups, deletion) is in flight.
    Busy,
}

impl BranchState {
    pub fn name(&self) -> &'static str {
        match self {
            BranchState::Warm => "warm",
            BranchState::Held(_) => "assigned",
            BranchState::Cooling(_) => "cooling",
            BranchState::Busy => "busy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub eni_id: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub vlan_id: u16,
    pub association_id: String,
    pub groups: GroupSet,
    pub state: BranchState,
}

impl Branch {
    pub fn holder(&self) -> Option<&Holder> {
        match &self.state {
            BranchState::Held(h) => Some(h),
            _ => None,
        }
    }

    /// The branch as the pod-eni annotation describes it.
    pub fn annotation(&self) -> BranchEni {
        BranchEni {
            eni_id: self.eni_id.clone(),
            mac: self.mac.clone(),
            private_ip: self.ip,
            ipv6: None,
            vlan_id: self.vlan_id,
            subnet: self.subnet,
            subnet_v6: None,
            association_id: Some(self.association_id.clone()).filter(|a| !a.is_empty()),
        }
    }

    /// The checkpoint entry; warm and busy branches need none (EC2 lists them on restart).
    fn record(&self) -> Option<CheckpointBranch> {
        let (pod, released) = match &self.state {
            BranchState::Held(h) => (Some(pod_record(h)), None),
            BranchState::Cooling(at) => (None, Some(checkpoint::to_unix_nanos(*at))),
            BranchState::Warm | BranchState::Busy => return None,
        };
        Some(CheckpointBranch {
            eni_id: self.eni_id.clone(),
            vlan_id: self.vlan_id,
            mac: self.mac.clone(),
            ipv4: self.ip,
            subnet_cidr: self.subnet,
            association_id: self.association_id.clone(),
            security_groups: self.groups.ids().map(str::to_string).collect(),
            pod,
            release_timestamp: released,
        })
    }
}

fn pod_record(h: &Holder) -> CheckpointBranchPod {
    CheckpointBranchPod {
        network_name: h.key.network_name.clone(),
        container_id: h.key.container_id.clone(),
        if_name: h.key.if_name.clone(),
        namespace: h.namespace.clone(),
        name: h.name.clone(),
        uid: h.uid.clone(),
        allocation_timestamp: checkpoint::to_unix_nanos(h.since),
    }
}

/// The holder a checkpoint entry names.
pub fn holder_from_record(pod: &CheckpointBranchPod) -> Holder {
    Holder {
        key: Key::new(&pod.network_name, &pod.container_id, &pod.if_name),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        since: checkpoint::from_unix_nanos(pod.allocation_timestamp),
    }
}

/// What a pod's ADD gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// The pod already holds this branch.
    Held(Branch),
    /// A warm branch with exactly the pod's groups, now held: nothing to ask EC2.
    Warm(Branch),
    /// A warm branch of other groups, now held; give it `to` at EC2, then
    /// [`BranchPool::finish_regroup`].
    Regroup { branch: Branch, to: GroupSet },
    /// No warm branch at all: this VLAN id is reserved for a branch made on demand, then
    /// [`BranchPool::insert`] or [`BranchPool::abort_create`].
    Create { vlan_id: u16 },
    /// Every VLAN id of the trunk is taken.
    Exhausted(VlanError),
}

/// Counts for the warm-pool plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub warm: u32,
    pub cooling: u32,
    /// Held, busy, being created, or a VLAN id taken by a branch ipamd does not own.
    pub in_use: u32,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchPool {
    vlans: VlanTable,
    branches: BTreeMap<String, Branch>,
}

impl BranchPool {
    pub fn new(branch_limit: u32) -> Self {
        Self {
            vlans: VlanTable::new(branch_limit),
            branches: BTreeMap::new(),
        }
    }

    /// Adds a branch that is associated with the trunk; its VLAN id is taken from now on.
    pub fn insert(&mut self, branch: Branch) {
        self.vlans.mark_used([branch.vlan_id]);
        self.branches.insert(branch.eni_id.clone(), branch);
    }

    /// VLAN ids in use on the trunk by branches ipamd does not manage.
    pub fn mark_foreign(&mut self, vlan_ids: impl IntoIterator<Item = u16>) {
        self.vlans.mark_used(vlan_ids);
    }

    pub fn get(&self, eni_id: &str) -> Option<&Branch> {
        self.branches.get(eni_id)
    }

    pub fn branches(&self) -> impl Iterator<Item = &Branch> {
        self.branches.values()
    }

    pub fn vlans_in_use(&self) -> Vec<u16> {
        self.vlans.in_use().collect()
    }

    pub fn held_by_key(&self, key: &Key) -> Option<&Branch> {
        self.branches
            .values()
            .find(|b| b.holder().is_some_and(|h| h.key == *key))
    }

    /// The branch held by the pod named `namespace/name`, whatever its UID.
    pub fn held_by_pod(&self, namespace: &str, name: &str) -> Option<&Branch> {
        self.branches.values().find(|b| {
            b.holder()
                .is_some_and(|h| h.namespace == namespace && h.name == name)
        })
    }

    /// A branch for the pod `holder` with `groups`: the one it holds, a warm one of the same
    /// groups, a warm one to regroup, or a VLAN id for a new one.
    pub fn take(&mut self, holder: &Holder, groups: &GroupSet) -> Take {
        if let Some(branch) = self.rekey(holder) {
            return Take::Held(branch);
        }
        if let Some(id) = self.warm_with(groups) {
            return Take::Warm(self.hold(&id, holder));
        }
        if let Some(id) = self.warm_to_regroup() {
            let branch = self.hold(&id, holder);
            return Take::Regroup {
                branch,
                to: groups.clone(),
            };
        }
        match self.vlans.allocate() {
            Ok(vlan_id) => Take::Create { vlan_id },
            Err(e) => Take::Exhausted(e),
        }
    }

    /// The branch already held under this key, or by the same pod (same UID) under an
    /// earlier sandbox's key, which it then holds under the new key: a pod has one sandbox
    /// at a time, so the earlier one is gone.
    fn rekey(&mut self, holder: &Holder) -> Option<Branch> {
        let held = self.branches.values_mut().find(|b| {
            b.holder().is_some_and(|h| {
                h.key == holder.key || (!holder.uid.is_empty() && h.uid == holder.uid)
            })
        })?;
        if let BranchState::Held(h) = &mut held.state {
            h.key = holder.key.clone();
        }
        Some(held.clone())
    }

    fn warm_with(&self, groups: &GroupSet) -> Option<String> {
        self.branches
            .values()
            .find(|b| b.state == BranchState::Warm && b.groups == *groups)
            .map(|b| b.eni_id.clone())
    }

    /// A warm branch of the set with the most warm branches, so the sets with few keep them.
    fn warm_to_regroup(&self) -> Option<String> {
        let mut per_set: BTreeMap<&GroupSet, Vec<&str>> = BTreeMap::new();
        for b in self
            .branches
            .values()
            .filter(|b| b.state == BranchState::Warm)
        {
            per_set.entry(&b.groups).or_default().push(&b.eni_id);
        }
        let fullest = per_set.values().max_by_key(|ids| ids.len())?;
        fullest.first().map(|id| id.to_string())
    }

    fn hold(&mut self, eni_id: &str, holder: &Holder) -> Branch {
        let branch = self.branches.get_mut(eni_id).expect("chosen from the map");
        branch.state = BranchState::Held(holder.clone());
        branch.clone()
    }

    /// Ends a regroup started by [`Self::take`]: on success the branch has `to`, else it is
    /// warm again with its old groups.
    pub fn finish_regroup(&mut self, eni_id: &str, to: &GroupSet, done: bool) {
        let Some(branch) = self.branches.get_mut(eni_id) else {
            return;
        };
        if done {
            branch.groups = to.clone();
        } else {
            branch.state = BranchState::Warm;
        }
    }

    /// A VLAN id reserved for a branch about to be made; [`Self::insert`] or
    /// [`Self::abort_create`] follows.
    pub fn reserve_vlan(&mut self) -> Result<u16, VlanError> {
        self.vlans.allocate()
    }

    /// The branch of a failed creation is not associated (or was deleted): its id is free.
    pub fn abort_create(&mut self, vlan_id: u16) {
        self.vlans.release(vlan_id);
    }

    /// A held branch its pod never used (the ADD failed after taking it) is warm again.
    pub fn give_back(&mut self, eni_id: &str, holder: &Key) {
        if let Some(branch) = self.branches.get_mut(eni_id) {
            if branch.holder().is_some_and(|h| h.key == *holder) {
                branch.state = BranchState::Warm;
            }
        }
    }

    /// The pod under `key` let its branch go: it cools down from `now`.
    pub fn release(&mut self, key: &Key, now: SystemTime) -> Option<Branch> {
        let branch = self
            .branches
            .values_mut()
            .find(|b| b.holder().is_some_and(|h| h.key == *key))?;
        branch.state = BranchState::Cooling(now);
        Some(branch.clone())
    }

    /// Cooled-down branches become warm; returns their ids.
    pub fn cool(&mut self, now: SystemTime, cooldown: Duration) -> Vec<String> {
        let mut done = Vec::new();
        for branch in self.branches.values_mut() {
            if let BranchState::Cooling(since) = branch.state {
                if now.duration_since(since).unwrap_or_default() >= cooldown {
                    branch.state = BranchState::Warm;
                    done.push(branch.eni_id.clone());
                }
            }
        }
        done
    }

    /// Takes a warm branch for an EC2 change; `None` when it is no longer warm.
    pub fn begin_change(&mut self, eni_id: &str) -> Option<Branch> {
        let branch = self.branches.get_mut(eni_id)?;
        if branch.state != BranchState::Warm {
            return None;
        }
        branch.state = BranchState::Busy;
        Some(branch.clone())
    }

    /// Ends a change of a busy branch: warm again with `groups`.
    pub fn finish_change(&mut self, eni_id: &str, groups: GroupSet) {
        if let Some(branch) = self.branches.get_mut(eni_id) {
            branch.groups = groups;
            branch.state = BranchState::Warm;
        }
    }

    /// The branch is no longer associated with the trunk: forget it and free its VLAN id.
    pub fn remove(&mut self, eni_id: &str) -> Option<Branch> {
        let branch = self.branches.remove(eni_id)?;
        self.vlans.release(branch.vlan_id);
        Some(branch)
    }

    pub fn warm(&self) -> Vec<WarmBranch> {
        self.branches
            .values()
            .filter(|b| b.state == BranchState::Warm)
            .map(|b| WarmBranch {
                eni_id: b.eni_id.clone(),
                groups: b.groups.clone(),
            })
            .collect()
    }

    pub fn counts(&self) -> Counts {
        let count = |state: fn(&BranchState) -> bool| {
            self.branches.values().filter(|b| state(&b.state)).count() as u32
        };
        let warm = count(|s| *s == BranchState::Warm);
        let cooling = count(|s| matches!(s, BranchState::Cooling(_)));
        let taken = self.vlans.in_use().count() as u32;
        Counts {
            warm,
            cooling,
            in_use: taken.saturating_sub(warm + cooling),
            limit: u32::from(self.vlans.max()),
        }
    }

    /// What the checkpoint keeps: held and cooling branches.
    pub fn records(&self) -> Vec<CheckpointBranch> {
        self.branches.values().filter_map(Branch::record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn set(ids: &[&str]) -> GroupSet {
        GroupSet::new(ids.iter().copied())
    }

    fn branch(id: &str, vlan_id: u16, groups: &[&str]) -> Branch {
        Branch {
            eni_id: id.into(),
            mac: format!("02:00:00:00:01:{vlan_id:02x}"),
            ip: Ipv4Addr::new(10, 0, 0, 100 + vlan_id as u8),
            subnet: "10.0.0.0/24".parse().unwrap(),
            vlan_id,
            association_id: format!("trunk-assoc-{vlan_id}"),
            groups: set(groups),
            state: BranchState::Warm,
        }
    }

    fn holder(container: &str, uid: &str) -> Holder {
        Holder {
            key: Key::new("aws-cni", container, "eth0"),
            namespace: "shop".into(),
            name: format!("pod-{uid}"),
            uid: uid.into(),
            since: t(0),
        }
    }

    fn pool() -> BranchPool {
        let mut p = BranchPool::new(4);
        p.insert(branch("eni-a", 1, &["sg-node"]));
        p.insert(branch("eni-b", 2, &["sg-catalog"]));
        p.insert(branch("eni-c", 3, &["sg-catalog"]));
        p
    }

    #[test]
    fn exact_warm_branch_is_taken_first() {
        let mut p = pool();
        let Take::Warm(b) = p.take(&holder("c1", "u1"), &set(&["sg-node"])) else {
            panic!("expected a warm branch");
        };
        assert_eq!(b.eni_id, "eni-a");
        assert_eq!(p.counts().warm, 2);
        assert_eq!(
            p.held_by_key(&holder("c1", "u1").key).unwrap().eni_id,
            "eni-a"
        );
    }

    #[test]
    fn a_held_branch_goes_to_no_second_pod() {
        let mut p = pool();
        p.take(&holder("c1", "u1"), &set(&["sg-node"]));
        // The only sg-node branch is held: the second pod gets a regroup, not eni-a.
        match p.take(&holder("c2", "u2"), &set(&["sg-node"])) {
            Take::Regroup { branch, to } => {
                assert_ne!(branch.eni_id, "eni-a");
                assert_eq!(to, set(&["sg-node"]));
            }
            other => panic!("expected a regroup, got {other:?}"),
        }
    }

    #[test]
    fn repeated_add_and_new_sandbox_of_the_same_pod_keep_the_branch() {
        let mut p = pool();
        p.take(&holder("c1", "u1"), &set(&["sg-node"]));
        let again = p.take(&holder("c1", "u1"), &set(&["sg-node"]));
        assert!(matches!(again, Take::Held(ref b) if b.eni_id == "eni-a"));
        let Take::Held(b) = p.take(&holder("c9", "u1"), &set(&["sg-node"])) else {
            panic!("same uid, new sandbox: same branch");
        };
        assert_eq!(b.holder().unwrap().key.container_id, "c9");
        assert!(
            p.release(&holder("c1", "u1").key, t(5)).is_none(),
            "old key let go"
        );
    }

    #[test]
    fn regroup_prefers_the_fullest_set_and_rolls_back_on_failure() {
        let mut p = pool();
        let Take::Regroup { branch, to } = p.take(&holder("c1", "u1"), &set(&["sg-db"])) else {
            panic!("expected a regroup");
        };
        assert_eq!(branch.eni_id, "eni-b", "sg-catalog has two warm branches");
        p.finish_regroup(&branch.eni_id, &to, false);
        assert_eq!(p.get("eni-b").unwrap().state, BranchState::Warm);
        assert_eq!(p.get("eni-b").unwrap().groups, set(&["sg-catalog"]));

        let Take::Regroup { branch, to } = p.take(&holder("c1", "u1"), &set(&["sg-db"])) else {
            panic!("expected a regroup");
        };
        p.finish_regroup(&branch.eni_id, &to, true);
        let b = p.get(&branch.eni_id).unwrap();
        assert_eq!(
            (b.groups.clone(), b.state.name()),
            (set(&["sg-db"]), "assigned")
        );
    }

    #[test]
    fn without_warm_branches_a_free_vlan_is_reserved_until_the_limit() {
        let mut p = BranchPool::new(2);
        p.mark_foreign([1]);
        assert_eq!(
            p.take(&holder("c1", "u1"), &set(&["sg-a"])),
            Take::Create { vlan_id: 2 }
        );
        assert!(matches!(
            p.take(&holder("c2", "u2"), &set(&["sg-a"])),
            Take::Exhausted(VlanError::Exhausted { max: 2 })
        ));
        p.abort_create(2);
        assert_eq!(p.reserve_vlan(), Ok(2));
        assert!(matches!(
            BranchPool::new(0).take(&holder("c1", "u1"), &set(&["sg-a"])),
            Take::Exhausted(VlanError::NoTrunking)
        ));
    }

    #[test]
    fn released_branch_cools_down_before_it_is_warm_again() {
        let mut p = BranchPool::new(1);
        p.insert(branch("eni-a", 1, &["sg-node"]));
        let h = holder("c1", "u1");
        p.take(&h, &set(&["sg-node"]));
        assert_eq!(p.release(&h.key, t(10)).unwrap().eni_id, "eni-a");
        // During the cooldown no pod can have it, not even one of its own groups.
        assert!(matches!(
            p.take(&holder("c2", "u2"), &set(&["sg-node"])),
            Take::Exhausted(_)
        ));
        assert!(p.cool(t(69), Duration::from_secs(60)).is_empty());
        assert_eq!(p.cool(t(70), Duration::from_secs(60)), ["eni-a"]);
        assert!(matches!(
            p.take(&holder("c2", "u2"), &set(&["sg-node"])),
            Take::Warm(_)
        ));
    }

    #[test]
    fn busy_branches_are_not_taken_and_removal_frees_the_vlan() {
        let mut p = pool();
        let busy = p.begin_change("eni-a").unwrap();
        assert!(p.begin_change("eni-a").is_none());
        assert!(matches!(
            p.take(&holder("c1", "u1"), &set(&["sg-node"])),
            Take::Regroup { ref branch, .. } if branch.eni_id != busy.eni_id
        ));
        p.remove("eni-a");
        assert!(!p.vlans_in_use().contains(&1));
        assert_eq!(p.reserve_vlan(), Ok(1));
    }

    #[test]
    fn counts_cover_held_cooling_and_foreign_vlans() {
        let mut p = pool();
        p.mark_foreign([4]);
        let h = holder("c1", "u1");
        p.take(&h, &set(&["sg-node"]));
        p.take(&holder("c2", "u2"), &set(&["sg-catalog"]));
        p.release(&h.key, t(1));
        let c = p.counts();
        assert_eq!((c.warm, c.cooling, c.in_use, c.limit), (1, 1, 2, 4));
    }

    #[test]
    fn records_hold_assignments_and_cooldowns_only() {
        let mut p = pool();
        let h = holder("c1", "u1");
        p.take(&h, &set(&["sg-node"]));
        p.take(&holder("c2", "u2"), &set(&["sg-catalog"]));
        p.release(&holder("c2", "u2").key, t(7));
        let records = p.records();
        assert_eq!(records.len(), 2);
        let held = records.iter().find(|r| r.eni_id == "eni-a").unwrap();
        assert_eq!(held.pod.as_ref().unwrap().uid, "u1");
        assert_eq!(holder_from_record(held.pod.as_ref().unwrap()), h);
        let cooling = records.iter().find(|r| r.eni_id == "eni-b").unwrap();
        assert_eq!(
            cooling.release_timestamp,
            Some(checkpoint::to_unix_nanos(t(7)))
        );
        assert!(cooling.pod.is_none());
    }

    #[test]
    fn give_back_only_undoes_the_same_holder() {
        let mut p = pool();
        let h = holder("c1", "u1");
        p.take(&h, &set(&["sg-node"]));
        p.give_back("eni-a", &holder("c2", "u2").key);
        assert_eq!(p.get("eni-a").unwrap().state.name(), "assigned");
        p.give_back("eni-a", &h.key);
        assert_eq!(p.get("eni-a").unwrap().state, BranchState::Warm);
    }
}
