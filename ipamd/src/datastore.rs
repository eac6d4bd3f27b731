//! The node's address book: attached ENIs with their secondary addresses or /28 prefixes, and
//! which CNI attachment holds which address. Pure logic; persistence goes through
//! [`CheckpointStore`] so every change is on disk before a caller sees it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use thiserror::Error;

use crate::checkpoint::{
    self, CheckpointAllocation, CheckpointBranch, CheckpointError, CheckpointFile,
    CheckpointMetadata, CheckpointStore, ReleasedAddress,
};

/// Network name of allocations rebuilt from host state, whose CNI key is unknown.
pub const REBUILT_NETWORK: &str = "_rebuilt-from-host";
/// The kernel's main routing table, used by the primary ENI.
pub const MAIN_TABLE: u32 = 254;

#[derive(Debug, Error)]
pub enum DatastoreError {
    #[error("no free address ({0})")]
    NoFreeAddress(Stats),
    #[error("persist {what}: {source}")]
    Persist {
        what: String,
        source: CheckpointError,
    },
    #[error("eni {0} is not known")]
    UnknownEni(String),
    #[error("eni {eni} cannot be removed: {why}")]
    EniBusy { eni: String, why: &'static str },
}

/// The CNI identity of one attachment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
}

impl Key {
    pub fn new(network: &str, container: &str, if_name: &str) -> Self {
        Key {
            network_name: network.into(),
            container_id: container.into(),
            if_name: if_name.into(),
        }
    }

    fn rebuilt(ip: Ipv4Addr) -> Self {
        Key::new(REBUILT_NETWORK, &format!("rebuilt-{ip}"), "unknown")
    }

    pub fn is_rebuilt(&self) -> bool {
        self.network_name == REBUILT_NETWORK
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.network_name, self.container_id, self.if_name
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub interfaces_count: u32,
}

/// What ipamd knows about an attached ENI when it adds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniInfo {
    pub id: String,
    pub mac: String,
    pub device_index: u32,
    pub primary: bool,
    pub primary_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
}

impl EniInfo {
    /// aws-node's table numbering: main for the primary ENI, device index + 1 otherwise.
    pub fn route_table(&self) -> u32 {
        if self.primary {
            MAIN_TABLE
        } else {
            self.device_index + 1
        }
    }
}

#[derive(Debug, Clone)]
pub struct Eni {
    pub info: EniInfo,
    pub added: SystemTime,
    pub cidrs: BTreeMap<Ipv4Net, Cidr>,
    /// Chosen for detach: none of its addresses may be handed out.
    pub deleting: bool,
    /// EC2 said the ENI holds its maximum; ask it for no more addresses.
    pub full_at_ec2: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub prefix: bool,
    /// Chosen for UnassignPrivateIpAddresses: out of the assignable set until EC2 answers.
    pub releasing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub meta: PodMeta,
    pub assigned_at: SystemTime,
    /// Set for allocations rebuilt from a host veth: the veth's pod hash.
    pub host_veth_hash: Option<String>,
}

/// The answer to an assign or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub device_index: u32,
    pub route_table: u32,
    pub subnet: Ipv4Net,
}

/// An allocation read back from the checkpoint or the host, before it is re-attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub key: Key,
    pub ip: Ipv4Addr,
    pub meta: PodMeta,
    pub assigned_at: SystemTime,
    pub host_veth_hash: Option<String>,
}

impl Restored {
    pub fn from_host(ip: Ipv4Addr, hash: &str, now: SystemTime) -> Self {
        Restored {
            key: Key::rebuilt(ip),
            ip,
            meta: PodMeta::default(),
            assigned_at: now,
            host_veth_hash: Some(hash.into()),
        }
    }
}

/// Address counts over the usable CIDRs (active mode, not being released, ENI not deleting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub total: u32,
    pub assigned: u32,
    pub cooldown: u32,
    pub total_prefixes: u32,
    /// Prefixes with no address assigned or cooling down.
    pub free_prefixes: u32,
}

impl Stats {
    /// Addresses an ADD could take now; cooling-down ones are not among them.
    pub fn available(&self) -> u32 {
        self.total
            .saturating_sub(self.assigned)
            .saturating_sub(self.cooldown)
    }

    fn add(&mut self, other: &Stats) {
        self.total += other.total;
        self.assigned += other.assigned;
        self.cooldown += other.cooldown;
        self.total_prefixes += other.total_prefixes;
        self.free_prefixes += other.free_prefixes;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "total {}, assigned {}, cooling down {}, available {}",
            self.total,
            self.assigned,
            self.cooldown,
            self.available()
        )
    }
}

/// One ENI's view for the pool manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniUsage {
    pub id: String,
    pub device_index: u32,
    pub primary: bool,
    pub deleting: bool,
    pub full_at_ec2: bool,
    pub added: SystemTime,
    pub stats: Stats,
    /// CIDRs of any kind on the ENI; each takes one of its address slots at EC2.
    pub slots_used: u32,
}

pub struct Datastore {
    enis: BTreeMap<String, Eni>,
    allocations: BTreeMap<Key, Allocation>,
    by_ip: HashMap<Ipv4Addr, Key>,
    /// Released addresses and when; reusable once `cooldown_period` has passed.
    cooldown: BTreeMap<Ipv4Addr, SystemTime>,
    cooldown_period: Duration,
    prefix_mode: bool,
    /// Branch ENIs held or cooling down, kept here only so they go to disk with the rest.
    branch_records: Vec<CheckpointBranch>,
    store: Box<dyn CheckpointStore>,
}

impl Datastore {
    pub fn new(
        store: Box<dyn CheckpointStore>,
        cooldown_period: Duration,
        prefix_mode: bool,
    ) -> Self {
        Datastore {
            enis: BTreeMap::new(),
            allocations: BTreeMap::new(),
            by_ip: HashMap::new(),
            cooldown: BTreeMap::new(),
            cooldown_period,
            prefix_mode,
            branch_records: Vec::new(),
            store,
        }
    }

    pub fn prefix_mode(&self) -> bool {
        self.prefix_mode
    }

    pub fn add_eni(&mut self, info: EniInfo, now: SystemTime) {
        match self.enis.get_mut(&info.id) {
            Some(eni) => eni.info = info,
            None => {
                let eni = Eni {
                    info: info.clone(),
                    added: now,
                    cidrs: BTreeMap::new(),
                    deleting: false,
                    full_at_ec2: false,
                };
                self.enis.insert(info.id, eni);
            }
        }
    }

    /// Records addresses (/32) or prefixes (/28) EC2 reports on the ENI; known ones are kept.
    /// The ENI's own primary address is never taken, whatever a response lists (some EC2
    /// emulators return every address of the ENI from AssignPrivateIpAddresses).
    pub fn add_cidrs(&mut self, eni_id: &str, cidrs: &[Ipv4Net]) -> Result<(), DatastoreError> {
        let eni = self.eni_mut(eni_id)?;
        let own = Ipv4Net::from(eni.info.primary_ip);
        for cidr in cidrs.iter().filter(|c| **c != own) {
            let prefix = cidr.prefix_len() < 32;
            eni.cidrs.entry(cidr.trunc()).or_insert(Cidr {
                prefix,
                releasing: false,
            });
        }
        Ok(())
    }

    pub fn set_full_at_ec2(&mut self, eni_id: &str, full: bool) -> Result<(), DatastoreError> {
        self.eni_mut(eni_id)?.full_at_ec2 = full;
        Ok(())
    }

    pub fn eni(&self, eni_id: &str) -> Option<&Eni> {
        self.enis.get(eni_id)
    }

    pub fn enis(&self) -> impl Iterator<Item = &Eni> {
        self.enis.values()
    }

    pub fn allocations(&self) -> impl Iterator<Item = (&Key, &Allocation)> {
        self.allocations.iter()
    }

    pub fn allocation(&self, key: &Key) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    /// The release time of an address still cooling down at `now`.
    pub fn cooling_since(&self, ip: Ipv4Addr, now: SystemTime) -> Option<SystemTime> {
        self.cooldown
            .get(&ip)
            .copied()
            .filter(|t| self.is_cooling(*t, now))
    }

    fn eni_mut(&mut self, eni_id: &str) -> Result<&mut Eni, DatastoreError> {
        self.enis
            .get_mut(eni_id)
            .ok_or_else(|| DatastoreError::UnknownEni(eni_id.into()))
    }

    fn is_cooling(&self, released: SystemTime, now: SystemTime) -> bool {
        now.duration_since(released)
            .map_or(true, |age| age < self.cooldown_period)
    }

    fn usable(&self, eni: &Eni, cidr: &Cidr) -> bool {
        !eni.deleting && !cidr.releasing && cidr.prefix == self.prefix_mode
    }

    /// Assigns an address to `key`, or returns the one it already holds.
    pub fn assign(
        &mut self,
        key: &Key,
        meta: PodMeta,
        now: SystemTime,
    ) -> Result<Assignment, DatastoreError> {
        if let Some(existing) = self.allocations.get(key) {
            return Ok(self.assignment_for(existing.ip, &existing.eni_id.clone()));
        }
        let Some((eni_id, ip)) = self.find_free(now) else {
            return Err(DatastoreError::NoFreeAddress(self.stats(now)));
        };
        let expired = self.take_expired_cooldowns(now);
        self.cooldown.remove(&ip);
        let alloc = Allocation {
            ip,
            eni_id: eni_id.clone(),
            meta,
            assigned_at: now,
            host_veth_hash: None,
        };
        self.insert_allocation(key.clone(), alloc);

        if let Err(source) = self.persist() {
            self.remove_allocation(key);
            self.cooldown.extend(expired);
            return Err(DatastoreError::Persist {
                what: format!("assign {ip} to {key}"),
                source,
            });
        }
        Ok(self.assignment_for(ip, &eni_id))
    }

    /// Releases `key`'s address into cooldown; `None` when the key holds nothing.
    pub fn release(
        &mut self,
        key: &Key,
        now: SystemTime,
    ) -> Result<Option<Assignment>, DatastoreError> {
        let Some(alloc) = self.remove_allocation(key) else {
            return Ok(None);
        };
        let expired = self.take_expired_cooldowns(now);
        let previous = self.cooldown.insert(alloc.ip, now);
        if let Err(source) = self.persist() {
            match previous {
                Some(t) => self.cooldown.insert(alloc.ip, t),
                None => self.cooldown.remove(&alloc.ip),
            };
            self.cooldown.extend(expired);
            let ip = alloc.ip;
            self.insert_allocation(key.clone(), alloc);
            return Err(DatastoreError::Persist {
                what: format!("release {ip} of {key}"),
                source,
            });
        }
        Ok(Some(self.assignment_for(alloc.ip, &alloc.eni_id)))
    }

    /// The key of an allocation rebuilt from a host veth whose pod hash is `hash`.
    pub fn rebuilt_key_for(&self, hash: &str) -> Option<Key> {
        self.allocations
            .iter()
            .find(|(k, a)| k.is_rebuilt() && a.host_veth_hash.as_deref() == Some(hash))
            .map(|(k, _)| k.clone())
    }

    fn find_free(&self, now: SystemTime) -> Option<(String, Ipv4Addr)> {
        let mut enis: Vec<&Eni> = self.enis.values().collect();
        enis.sort_by_key(|e| e.info.device_index);
        for eni in enis {
            for (net, cidr) in &eni.cidrs {
                if !self.usable(eni, cidr) {
                    continue;
                }
                let free = addresses(net).find(|ip| {
                    !self.by_ip.contains_key(ip) && self.cooling_since(*ip, now).is_none()
                });
                if let Some(ip) = free {
                    return Some((eni.info.id.clone(), ip));
                }
            }
        }
        None
    }

    fn take_expired_cooldowns(&mut self, now: SystemTime) -> Vec<(Ipv4Addr, SystemTime)> {
        let expired: Vec<_> = self
            .cooldown
            .iter()
            .filter(|(_, t)| !self.is_cooling(**t, now))
            .map(|(ip, t)| (*ip, *t))
            .collect();
        for (ip, _) in &expired {
            self.cooldown.remove(ip);
        }
        expired
    }

    fn insert_allocation(&mut self, key: Key, alloc: Allocation) {
        self.by_ip.insert(alloc.ip, key.clone());
        self.allocations.insert(key, alloc);
    }

    fn remove_allocation(&mut self, key: &Key) -> Option<Allocation> {
        let alloc = self.allocations.remove(key)?;
        self.by_ip.remove(&alloc.ip);
        Some(alloc)
    }

    fn assignment_for(&self, ip: Ipv4Addr, eni_id: &str) -> Assignment {
        let eni = &self.enis[eni_id];
        Assignment {
            ip,
            eni_id: eni_id.into(),
            device_index: eni.info.device_index,
            route_table: eni.info.route_table(),
            subnet: eni.info.subnet,
        }
    }

    /// The ENI and CIDR that hold `ip`, if any.
    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<(&Eni, Ipv4Net)> {
        self.enis.values().find_map(|eni| {
            eni.cidrs
                .keys()
                .find(|net| net.contains(&ip))
                .map(|net| (eni, *net))
        })
    }

    pub fn stats(&self, now: SystemTime) -> Stats {
        let mut total = Stats::default();
        for eni in self.enis.values() {
            total.add(&self.eni_stats(eni, now));
        }
        total
    }

    fn eni_stats(&self, eni: &Eni, now: SystemTime) -> Stats {
        let mut stats = Stats::default();
        for (net, cidr) in eni.cidrs.iter().filter(|(_, c)| self.usable(eni, c)) {
            let mut busy = false;
            for ip in addresses(net) {
                stats.total += 1;
                if self.by_ip.contains_key(&ip) {
                    stats.assigned += 1;
                    busy = true;
                } else if self.cooling_since(ip, now).is_some() {
                    stats.cooldown += 1;
                    busy = true;
                }
            }
            if cidr.prefix {
                stats.total_prefixes += 1;
                stats.free_prefixes += u32::from(!busy);
            }
        }
        stats
    }

    pub fn usage(&self, now: SystemTime) -> Vec<EniUsage> {
        let mut usage: Vec<EniUsage> = self
            .enis
            .values()
            .map(|eni| EniUsage {
                id: eni.info.id.clone(),
                device_index: eni.info.device_index,
                primary: eni.info.primary,
                deleting: eni.deleting,
                full_at_ec2: eni.full_at_ec2,
                added: eni.added,
                stats: self.eni_stats(eni, now),
                slots_used: eni.cidrs.len() as u32,
            })
            .collect();
        usage.sort_by_key(|u| u.device_index);
        usage
    }

    /// Takes up to `want` wholly free CIDRs out of the assignable set for an Unassign call,
    /// highest device index first so secondary ENIs empty out and can be freed.
    pub fn reserve_free_cidrs(
        &mut self,
        want: u32,
        now: SystemTime,
    ) -> Vec<(String, Vec<Ipv4Net>)> {
        let mut chosen: Vec<(String, Vec<Ipv4Net>)> = Vec::new();
        let mut left = want;
        let mut order: Vec<String> = self.enis.keys().cloned().collect();
        order.sort_by_key(|id| std::cmp::Reverse(self.enis[id].info.device_index));
        for id in order {
            let nets: Vec<Ipv4Net> = {
                let eni = &self.enis[&id];
                eni.cidrs
                    .iter()
                    .filter(|(net, c)| self.usable(eni, c) && self.cidr_is_idle(net, now))
                    .map(|(net, _)| *net)
                    .take(left as usize)
                    .collect()
            };
            if nets.is_empty() {
                continue;
            }
            let eni = self.enis.get_mut(&id).expect("listed above");
            for net in &nets {
                eni.cidrs.get_mut(net).expect("listed above").releasing = true;
            }
            left -= nets.len() as u32;
            chosen.push((id, nets));
            if left == 0 {
                break;
            }
        }
        chosen
    }

    fn cidr_is_idle(&self, net: &Ipv4Net, now: SystemTime) -> bool {
        addresses(net)
            .all(|ip| !self.by_ip.contains_key(&ip) && self.cooling_since(ip, now).is_none())
    }

    /// Ends a release started by [`Self::reserve_free_cidrs`]: drops the CIDRs when EC2 took
    /// them back, returns them to the assignable set when it did not.
    pub fn finish_release(&mut self, eni_id: &str, nets: &[Ipv4Net], released: bool) {
        let Some(eni) = self.enis.get_mut(eni_id) else {
            return;
        };
        for net in nets {
            if released {
                eni.cidrs.remove(net);
            } else if let Some(cidr) = eni.cidrs.get_mut(net) {
                cidr.releasing = false;
            }
        }
    }

    /// Marks an idle, old-enough secondary ENI as deleting so nothing new lands on it.
    pub fn begin_eni_removal(
        &mut self,
        eni_id: &str,
        min_age: Duration,
        now: SystemTime,
    ) -> Result<(), DatastoreError> {
        let busy = |why| DatastoreError::EniBusy {
            eni: eni_id.into(),
            why,
        };
        let eni = self
            .enis
            .get(eni_id)
            .ok_or_else(|| DatastoreError::UnknownEni(eni_id.into()))?;
        if eni.info.primary {
            return Err(busy("primary eni"));
        }
        if now.duration_since(eni.added).unwrap_or_default() < min_age {
            return Err(busy("younger than the minimum age"));
        }
        if !eni.cidrs.keys().all(|net| self.cidr_is_idle(net, now)) {
            return Err(busy("addresses assigned or cooling down"));
        }
        self.eni_mut(eni_id)?.deleting = true;
        Ok(())
    }

    pub fn finish_eni_removal(&mut self, eni_id: &str, removed: bool) {
        if removed {
            if let Some(eni) = self.enis.remove(eni_id) {
                for net in eni.cidrs.keys() {
                    for ip in addresses(net) {
                        self.cooldown.remove(&ip);
                    }
                }
            }
        } else if let Some(eni) = self.enis.get_mut(eni_id) {
            eni.deleting = false;
        }
    }

    /// Re-attaches allocations found at start-up. Returns those whose address is on no ENI
    /// or already taken; they are not restored.
    pub fn restore(
        &mut self,
        restored: Vec<Restored>,
        released: Vec<(Ipv4Addr, SystemTime)>,
    ) -> Vec<Restored> {
        let mut dropped = Vec::new();
        for r in restored {
            let owner = self.owner_of(r.ip).map(|(eni, _)| eni.info.id.clone());
            match owner {
                Some(eni_id)
                    if !self.by_ip.contains_key(&r.ip)
                        && !self.allocations.contains_key(&r.key) =>
                {
                    let alloc = Allocation {
                        ip: r.ip,
                        eni_id,
                        meta: r.meta,
                        assigned_at: r.assigned_at,
                        host_veth_hash: r.host_veth_hash,
                    };
                    self.insert_allocation(r.key, alloc);
                }
                _ => dropped.push(r),
            }
        }
        for (ip, at) in released {
            if !self.by_ip.contains_key(&ip) {
                self.cooldown.insert(ip, at);
            }
        }
        dropped
    }

    /// Puts every unassigned address into cooldown from `now`: used after the record of
    /// recently released addresses was lost, so none of them is reused too early.
    pub fn cool_down_all_free(&mut self, now: SystemTime) {
        let free: Vec<Ipv4Addr> = self
            .enis
            .values()
            .flat_map(|eni| eni.cidrs.keys().flat_map(addresses))
            .filter(|ip| !self.by_ip.contains_key(ip))
            .collect();
        for ip in free {
            self.cooldown.insert(ip, now);
        }
    }

    pub fn branch_records(&self) -> &[CheckpointBranch] {
        &self.branch_records
    }

    /// Takes the branch ENI records read at start-up; the next write keeps them.
    pub fn keep_branch_records(&mut self, records: Vec<CheckpointBranch>) {
        self.branch_records = records;
    }

    /// Replaces the branch ENI records and writes the checkpoint; on a failed write the
    /// previous records stay, in memory as on disk.
    pub fn set_branch_records(
        &mut self,
        records: Vec<CheckpointBranch>,
    ) -> Result<(), DatastoreError> {
        let previous = std::mem::replace(&mut self.branch_records, records);
        if let Err(source) = self.persist() {
            self.branch_records = previous;
            return Err(DatastoreError::Persist {
                what: "branch eni records".into(),
                source,
            });
        }
        Ok(())
    }

    pub fn persist(&mut self) -> Result<(), CheckpointError> {
        let snapshot = self.snapshot();
        self.store.save(&snapshot)
    }

    pub fn snapshot(&self) -> CheckpointFile {
        let allocations = self
            .allocations
            .iter()
            .map(|(k, a)| checkpoint_entry(k, a))
            .collect();
        let recently_released = self
            .cooldown
            .iter()
            .map(|(ip, t)| ReleasedAddress {
                ipv4: *ip,
                release_timestamp: checkpoint::to_unix_nanos(*t),
            })
            .collect();
        CheckpointFile {
            allocations,
            recently_released,
            branch_enis: self.branch_records.clone(),
            ..CheckpointFile::new()
        }
    }
}

fn checkpoint_entry(key: &Key, alloc: &Allocation) -> CheckpointAllocation {
    CheckpointAllocation {
        network_name: key.network_name.clone(),
        container_id: key.container_id.clone(),
        if_name: key.if_name.clone(),
        ipv4: Some(alloc.ip),
        allocation_timestamp: checkpoint::to_unix_nanos(alloc.assigned_at),
        metadata: CheckpointMetadata {
            pod_namespace: alloc.meta.namespace.clone(),
            pod_name: alloc.meta.name.clone(),
            interfaces_count: alloc.meta.interfaces_count,
        },
        host_veth_hash: alloc.host_veth_hash.clone(),
    }
}

/// Every address of a CIDR. All 16 addresses of a delegated /28 are usable, unlike a subnet.
pub fn addresses(net: &Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(net.network());
    let last = u32::from(net.broadcast());
    (first..=last).map(Ipv4Addr::from)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records every save and fails on demand, standing in for the JSON file.
    #[derive(Clone, Default)]
    struct FakeStore(Arc<Mutex<(Vec<CheckpointFile>, bool)>>);

    impl FakeStore {
        fn fail(&self, fail: bool) {
            self.0.lock().unwrap().1 = fail;
        }
        fn last(&self) -> CheckpointFile {
            self.0
                .lock()
                .unwrap()
                .0
                .last()
                .cloned()
                .expect("a save happened")
        }
        fn saves(&self) -> usize {
            self.0.lock().unwrap().0.len()
        }
    }

    impl CheckpointStore for FakeStore {
        fn save(&mut self, data: &CheckpointFile) -> Result<(), CheckpointError> {
            let mut state = self.0.lock().unwrap();
            if state.1 {
                let source = std::io::Error::from_raw_os_error(libc::ENOSPC);
                return Err(CheckpointError::Write {
                    path: "ipam.json".into(),
                    source,
                });
            }
            state.0.push(data.clone());
            Ok(())
        }
    }

    const COOLDOWN: Duration = Duration::from_secs(30);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn eni(id: &str, device: u32) -> EniInfo {
        EniInfo {
            id: id.into(),
            mac: format!("02:00:00:00:00:0{device}"),
            device_index: device,
            primary: device == 0,
            primary_ip: Ipv4Addr::new(10, 0, 0, 10 + device as u8),
            subnet: net("10.0.0.0/24"),
        }
    }

    /// Primary ENI with .21-.23, secondary eni-b (device 1) with .31-.33.
    fn store_with_two_enis() -> (Datastore, FakeStore) {
        let fake = FakeStore::default();
        let mut ds = Datastore::new(Box::new(fake.clone()), COOLDOWN, false);
        ds.add_eni(eni("eni-a", 0), t(0));
        ds.add_cidrs(
            "eni-a",
            &[
                net("10.0.0.21/32"),
                net("10.0.0.22/32"),
                net("10.0.0.23/32"),
            ],
        )
        .unwrap();
        ds.add_eni(eni("eni-b", 1), t(0));
        ds.add_cidrs(
            "eni-b",
            &[
                net("10.0.0.31/32"),
                net("10.0.0.32/32"),
                net("10.0.0.33/32"),
            ],
        )
        .unwrap();
        (ds, fake)
    }

    fn key(c: &str) -> Key {
        Key::new("aws-cni", c, "eth0")
    }

    fn meta(name: &str) -> PodMeta {
        PodMeta {
            namespace: "ns1".into(),
            name: name.into(),
            interfaces_count: 1,
        }
    }

    #[test]
    fn assign_is_idempotent_and_persisted_first() {
        let (mut ds, fake) = store_with_two_enis();
        let a = ds.assign(&key("c1"), meta("a"), t(1)).unwrap();
        assert_eq!(
            (a.ip, a.device_index, a.route_table),
            ("10.0.0.21".parse().unwrap(), 0, 254)
        );
        assert_eq!(ds.assign(&key("c1"), meta("a"), t(2)).unwrap(), a);
        assert_eq!(fake.saves(), 1, "a repeated ADD writes nothing");
        let saved = fake.last();
        assert_eq!(saved.allocations[0].container_id, "c1");
        assert_eq!(saved.allocations[0].ipv4, Some(a.ip));
        assert_eq!(saved.allocations[0].metadata.pod_name, "a");
    }

    #[test]
    fn secondary_eni_addresses_use_their_table() {
        let (mut ds, _) = store_with_two_enis();
        for c in ["c1", "c2", "c3"] {
            ds.assign(&key(c), meta(c), t(1)).unwrap();
        }
        let d = ds.assign(&key("c4"), meta("d"), t(1)).unwrap();
        assert_eq!(
            (d.eni_id.as_str(), d.device_index, d.route_table),
            ("eni-b", 1, 2)
        );
    }

    #[test]
    fn unknown_release_is_success_without_a_write() {
        let (mut ds, fake) = store_with_two_enis();
        assert_eq!(ds.release(&key("nope"), t(1)).unwrap(), None);
        assert_eq!(fake.saves(), 0);
    }

    #[test]
    fn released_address_cools_down_and_counts_against_availability() {
        let (mut ds, fake) = store_with_two_enis();
        let a = ds.assign(&key("c1"), meta("a"), t(0)).unwrap();
        let released = ds.release(&key("c1"), t(10)).unwrap().unwrap();
        assert_eq!(released.ip, a.ip);
        assert_eq!(fake.last().recently_released[0].ipv4, a.ip);

        let stats = ds.stats(t(11));
        assert_eq!(
            (
                stats.total,
                stats.assigned,
                stats.cooldown,
                stats.available()
            ),
            (6, 0, 1, 5)
        );
        assert_ne!(ds.assign(&key("c2"), meta("b"), t(11)).unwrap().ip, a.ip);
        assert_eq!(ds.stats(t(40)).cooldown, 0, "cooldown over after 30 s");
    }

    #[test]
    fn cooldown_blocks_reuse_until_it_expires() {
        let fake = FakeStore::default();
        let mut ds = Datastore::new(Box::new(fake), COOLDOWN, false);
        ds.add_eni(eni("eni-a", 0), t(0));
        ds.add_cidrs("eni-a", &[net("10.0.0.21/32")]).unwrap();
        ds.assign(&key("c1"), meta("a"), t(0)).unwrap();
        ds.release(&key("c1"), t(5)).unwrap();
        let err = ds.assign(&key("c2"), meta("b"), t(20)).unwrap_err();
        assert!(
            matches!(err, DatastoreError::NoFreeAddress(s) if s.cooldown == 1),
            "{err}"
        );
        assert_eq!(
            ds.assign(&key("c2"), meta("b"), t(35))
                .unwrap()
                .ip
                .to_string(),
            "10.0.0.21"
        );
    }

    #[test]
    fn failed_write_rolls_back_assign_and_release() {
        let (mut ds, fake) = store_with_two_enis();
        fake.fail(true);
        let err = ds.assign(&key("c1"), meta("a"), t(1)).unwrap_err();
        assert!(matches!(err, DatastoreError::Persist { .. }), "{err}");
        assert_eq!(ds.stats(t(1)).assigned, 0);
        assert!(ds.allocation(&key("c1")).is_none());

        fake.fail(false);
        let a = ds.assign(&key("c1"), meta("a"), t(1)).unwrap();
        fake.fail(true);
        assert!(ds.release(&key("c1"), t(2)).is_err());
        assert_eq!(
            ds.allocation(&key("c1")).unwrap().ip,
            a.ip,
            "allocation kept"
        );
        assert_eq!(
            ds.stats(t(2)).cooldown,
            0,
            "no cooldown for an unreleased address"
        );
    }

    #[test]
    fn prefix_mode_hands_out_all_sixteen_addresses() {
        let fake = FakeStore::default();
        let mut ds = Datastore::new(Box::new(fake), COOLDOWN, true);
        ds.add_eni(eni("eni-a", 0), t(0));
        ds.add_cidrs("eni-a", &[net("10.0.0.32/28"), net("10.0.0.99/32")])
            .unwrap();
        let stats = ds.stats(t(0));
        assert_eq!(
            (stats.total, stats.total_prefixes, stats.free_prefixes),
            (16, 1, 1)
        );
        let ips: Vec<_> = (0..16)
            .map(|i| {
                ds.assign(&key(&format!("c{i}")), meta("p"), t(0))
                    .unwrap()
                    .ip
            })
            .collect();
        assert_eq!(ips.first().unwrap().to_string(), "10.0.0.32");
        assert_eq!(ips.last().unwrap().to_string(), "10.0.0.47");
        assert!(
            ds.assign(&key("c16"), meta("p"), t(0)).is_err(),
            "the /32 is the other mode"
        );
        assert_eq!(ds.stats(t(0)).free_prefixes, 0);
    }

    #[test]
    fn cidrs_reserved_for_release_are_not_assignable_until_returned() {
        let (mut ds, _) = store_with_two_enis();
        ds.assign(&key("c1"), meta("a"), t(0)).unwrap();
        let reserved = ds.reserve_free_cidrs(4, t(0));
        assert_eq!(reserved[0].0, "eni-b", "highest device first");
        assert_eq!(reserved.iter().map(|(_, n)| n.len()).sum::<usize>(), 4);
        assert_eq!(ds.stats(t(0)).total, 2);
        assert_eq!(
            ds.assign(&key("c2"), meta("b"), t(0))
                .unwrap()
                .ip
                .to_string(),
            "10.0.0.23"
        );
        assert!(ds.assign(&key("c3"), meta("c"), t(0)).is_err());

        let (eni_b, nets_b) = &reserved[0];
        ds.finish_release(eni_b, nets_b, false);
        assert_eq!(
            ds.stats(t(0)).total,
            5,
            "failed unassign returns the addresses"
        );
        let (eni_a, nets_a) = &reserved[1];
        ds.finish_release(eni_a, nets_a, true);
        assert_eq!(ds.stats(t(0)).total, 5);
        assert!(ds.owner_of("10.0.0.22".parse().unwrap()).is_none());
    }

    #[test]
    fn busy_or_young_or_primary_enis_are_not_removed() {
        let (mut ds, _) = store_with_two_enis();
        let min_age = Duration::from_secs(60);
        assert!(
            ds.begin_eni_removal("eni-b", min_age, t(30)).is_err(),
            "too young"
        );
        assert!(
            ds.begin_eni_removal("eni-a", min_age, t(100)).is_err(),
            "primary"
        );
        for c in ["c1", "c2", "c3", "c4"] {
            ds.assign(&key(c), meta(c), t(70)).unwrap();
        }
        ds.release(&key("c4"), t(71)).unwrap();
        assert!(
            ds.begin_eni_removal("eni-b", min_age, t(80)).is_err(),
            "address cooling down"
        );

        ds.begin_eni_removal("eni-b", min_age, t(200)).unwrap();
        assert!(
            ds.assign(&key("c5"), meta("e"), t(200)).is_err(),
            "deleting eni hands out nothing"
        );
        ds.finish_eni_removal("eni-b", true);
        assert!(ds.eni("eni-b").is_none());
        assert_eq!(ds.stats(t(200)).total, 3);
    }

    #[test]
    fn restore_keeps_keys_cooldowns_and_drops_foreign_addresses() {
        let (mut ds, fake) = store_with_two_enis();
        let live = Restored {
            key: key("c1"),
            ip: "10.0.0.32".parse().unwrap(),
            meta: meta("a"),
            assigned_at: t(1),
            host_veth_hash: None,
        };
        let foreign = Restored {
            ip: "10.9.9.9".parse().unwrap(),
            key: key("c2"),
            ..live.clone()
        };
        let dup = Restored {
            key: key("c3"),
            ..live.clone()
        };
        let dropped = ds.restore(
            vec![live, foreign.clone(), dup.clone()],
            vec![("10.0.0.21".parse().unwrap(), t(5))],
        );
        assert_eq!(dropped, vec![foreign, dup]);
        assert_eq!(
            ds.assign(&key("c1"), meta("a"), t(6))
                .unwrap()
                .ip
                .to_string(),
            "10.0.0.32"
        );
        assert_eq!(
            ds.assign(&key("c9"), meta("z"), t(6))
                .unwrap()
                .ip
                .to_string(),
            "10.0.0.22"
        );
        assert_eq!(
            fake.last().recently_released[0].ipv4.to_string(),
            "10.0.0.21"
        );
    }

    #[test]
    fn rebuilt_allocations_are_found_by_pod_hash() {
        let (mut ds, _) = store_with_two_enis();
        let ip = "10.0.0.22".parse().unwrap();
        ds.restore(vec![Restored::from_host(ip, "0123456789a", t(0))], vec![]);
        let k = ds.rebuilt_key_for("0123456789a").unwrap();
        assert!(k.is_rebuilt());
        assert_eq!(ds.release(&k, t(1)).unwrap().unwrap().ip, ip);
        assert_eq!(ds.rebuilt_key_for("0123456789a"), None);
    }

    #[test]
    fn an_enis_primary_address_is_never_a_pod_address() {
        let (mut ds, _) = store_with_two_enis();
        ds.add_cidrs("eni-b", &[net("10.0.0.11/32"), net("10.0.0.34/32")])
            .unwrap();
        assert!(ds.owner_of("10.0.0.11".parse().unwrap()).is_none());
        assert!(ds.owner_of("10.0.0.34".parse().unwrap()).is_some());
    }

    #[test]
    fn branch_records_go_to_disk_with_the_rest_or_not_at_all() {
        let (mut ds, fake) = store_with_two_enis();
        let record = CheckpointBranch {
            eni_id: "eni-branch".into(),
            vlan_id: 2,
            mac: "02:00:00:00:02:02".into(),
            ipv4: "10.0.0.50".parse().unwrap(),
            subnet_cidr: net("10.0.0.0/24"),
            association_id: "trunk-assoc-2".into(),
            security_groups: vec!["sg-a".into()],
            pod: None,
            release_timestamp: Some(1),
        };
        ds.set_branch_records(vec![record.clone()]).unwrap();
        assert_eq!(fake.last().branch_enis, vec![record.clone()]);
        ds.assign(&key("c1"), meta("a"), t(1)).unwrap();
        assert_eq!(
            fake.last().branch_enis,
            vec![record.clone()],
            "kept by later writes"
        );

        fake.fail(true);
        assert!(ds.set_branch_records(vec![]).is_err());
        assert_eq!(
            ds.branch_records(),
            [record],
            "failed write changes nothing"
        );
    }

    #[test]
    fn lost_cooldown_record_cools_every_free_address() {
        let (mut ds, _) = store_with_two_enis();
        ds.assign(&key("c1"), meta("a"), t(0)).unwrap();
        ds.cool_down_all_free(t(0));
        assert_eq!(ds.stats(t(1)).available(), 0);
        assert_eq!(ds.stats(t(31)).available(), 5);
    }
}
