//! The pool manager: keeps the warm pool at its targets by asking EC2 for addresses and ENIs,
//! giving back what is over target, and freeing idle ENIs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use thiserror::Error;
use tokio::sync::watch;

use crate::datastore::{DatastoreError, EniInfo, EniUsage, Key};
use crate::ec2::{self, AddressRequest, Ec2, Ec2Error, NewEni};
use crate::host::{Host, HostError};
use crate::node::Node;
use crate::pool;
use crate::sweep::{self, LeakSweep};

/// aws-node gives addresses back at most this often, so churn does not turn into a cycle of
/// assign and unassign calls.
const SHRINK_INTERVAL: Duration = Duration::from_secs(30);
/// Pause after EC2 says the subnet has no free addresses.
const SUBNET_FULL_BACKOFF: Duration = Duration::from_secs(120);
/// Pause after the first failed step; doubles per failure up to the cap.
const FAILURE_BACKOFF_BASE: Duration = Duration::from_millis(500);
const FAILURE_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Growth steps in one round before waiting for the next tick.
const MAX_STEPS_PER_ROUND: u32 = 10;
/// How long to wait for a detach to finish before deleting anyway.
const DETACH_WAIT: Duration = Duration::from_secs(15);
/// How often allocations rebuilt from host veths are checked against the host again.
const ORPHAN_CHECK_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum ManagerError {
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error("eni {0}: not attached")]
    NotAttached(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Changed,
    Idle,
}

pub struct Manager {
    node: Arc<Node>,
    ec2: Ec2,
    host: Arc<Host>,
    last_shrink: Option<Instant>,
    /// No growth before this instant: the subnet said it is full.
    backoff_until: Option<Instant>,
    /// No EC2 action at all before this instant: recent steps failed.
    paused_until: Option<Instant>,
    failures: u32,
    last_orphan_check: Instant,
    leaks: LeakSweep,
}

impl Manager {
    pub fn new(node: Arc<Node>, ec2: Ec2, host: Arc<Host>) -> Self {
        let leaks = LeakSweep::new(node.config.leak_sweep);
        Manager {
            node,
            ec2,
            host,
            last_shrink: None,
            backoff_until: None,
            paused_until: None,
            failures: 0,
            last_orphan_check: Instant::now(),
            leaks,
        }
    }

    /// Runs until `shutdown` turns true: a round every VPC_CNI_POOL_INTERVAL_MS and right
    /// after any assign or release.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let interval = self.node.config.pool_interval;
        while !*shutdown.borrow() {
            self.round().await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.node.pool_woken() => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!("pool manager stopped");
    }

    /// Steps until the pool is where the targets want it, or nothing more can be done now.
    pub async fn round(&mut self) {
        if self.last_orphan_check.elapsed() >= ORPHAN_CHECK_INTERVAL {
            self.last_orphan_check = Instant::now();
            self.reclaim_orphans().await;
        }
        if self.leaks.due() {
            self.sweep_leaks().await;
        }
        for _ in 0..MAX_STEPS_PER_ROUND {
            if self.node.is_terminating() {
                return;
            }
            match self.step().await {
                Ok(Step::Changed) => {
                    self.failures = 0;
                    self.node.announce_pool_change();
                }
                Ok(Step::Idle) => return,
                Err(e) => {
                    self.failed_step(&e);
                    return;
                }
            }
        }
    }

    async fn step(&mut self) -> Result<Step, ManagerError> {
        if self
            .paused_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Ok(Step::Idle);
        }
        let (stats, usage) = {
            let ds = self.node.datastore();
            let now = SystemTime::now();
            (ds.stats(now), ds.usage(now))
        };
        let (t, l) = (&self.node.targets, &self.node.limits);
        if pool::is_low(t, &stats, l) {
            return self.grow(&stats, &usage).await;
        }
        if pool::excess(t, &stats) > 0 && self.shrink_due() {
            return self.shrink(pool::excess(t, &stats)).await;
        }
        self.free_idle_eni(&stats, &usage).await
    }

    /// Deletes this node's address ENIs that are attached nowhere once two sweeps in a row
    /// found them: one whose attach and clean-up both failed, or one detached and not deleted.
    async fn sweep_leaks(&mut self) {
        let instance = &self.node.identity.instance_id;
        let tagged = match self.ec2.enis_tagged(ec2::TAG_INSTANCE_ID, instance).await {
            Ok(tagged) => tagged,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for leaked enis");
                self.leaks.skipped();
                return;
            }
        };
        let unused = sweep::unattached(&tagged, &ec2::eni_description(instance));
        self.leaks
            .delete_confirmed(&self.ec2, unused, "leaked eni")
            .await;
    }

    /// Allocations rebuilt from a host veth have no CNI key a DEL or GC could name; once
    /// their veth is gone the pod is too, so their address is released here.
    async fn reclaim_orphans(&self) {
        let rebuilt: Vec<(Key, String)> = self
            .node
            .datastore()
            .allocations()
            .filter_map(|(k, a)| Some((k.clone(), a.host_veth_hash.clone()?)))
            .filter(|(k, _)| k.is_rebuilt())
            .collect();
        if rebuilt.is_empty() {
            return;
        }
        let state = match self.host.pod_state(&self.node.config.veth_prefix).await {
            Ok(state) => state,
            Err(e) => return tracing::warn!(error = %e, "orphan check skipped"),
        };
        for (key, hash) in rebuilt.iter().filter(|(_, h)| !state.has_veth_for(h)) {
            match self.node.datastore().release(key, SystemTime::now()) {
                Ok(Some(a)) => {
                    tracing::info!(ip = %a.ip, veth_hash = %hash, "pod of a rebuilt allocation is gone, address released")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "release of a rebuilt allocation failed"),
            }
        }
    }

    /// Waiting ADDs wake the manager several times a second; after a failure it pauses,
    /// doubling from 1 s up to a minute, so a persistent EC2 error does not become a flood.
    fn failed_step(&mut self, e: &ManagerError) {
        self.failures = self.failures.saturating_add(1);
        let pause = FAILURE_BACKOFF_BASE
            .saturating_mul(1 << self.failures.min(6))
            .min(FAILURE_BACKOFF_CAP);
        self.paused_until = Some(Instant::now() + pause);
        tracing::warn!(error = %e, failures = self.failures, pause_ms = pause.as_millis() as u64, "pool step failed");
    }

    fn shrink_due(&self) -> bool {
        self.last_shrink
            .is_none_or(|at| at.elapsed() >= SHRINK_INTERVAL)
    }

    fn request(&self, n: u32) -> AddressRequest {
        if self.node.targets.prefix_mode {
            AddressRequest::Prefixes(n)
        } else {
            AddressRequest::Ips(n)
        }
    }

    async fn grow(
        &mut self,
        stats: &crate::datastore::Stats,
        usage: &[EniUsage],
    ) -> Result<Step, ManagerError> {
        if self
            .backoff_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Ok(Step::Idle);
        }
        let slots = self.node.limits.slots_per_eni;
        let with_room = usage
            .iter()
            .find(|u| !u.deleting && !u.full_at_ec2 && u.slots_used < slots);
        if let Some(eni) = with_room {
            let n = pool::request_size(&self.node.targets, stats, slots - eni.slots_used);
            return self.add_addresses(&eni.id, n).await;
        }
        if (usage.len() as u32) < self.node.max_enis() {
            let n = pool::request_size(&self.node.targets, stats, slots);
            return self.add_eni(n).await;
        }
        tracing::debug!(stats = %stats, enis = usage.len(), "pool low, instance at its eni limit");
        Ok(Step::Idle)
    }

    /// AssignPrivateIpAddresses on an existing ENI, retried with one address as aws-node
    /// does, and with EC2's view adopted when it says the ENI is already full.
    async fn add_addresses(&mut self, eni_id: &str, n: u32) -> Result<Step, ManagerError> {
        let mut result = self.ec2.assign_addresses(eni_id, self.request(n)).await;
        if n > 1 && result.as_ref().is_err_and(|e| !self.handled_specially(e)) {
            result = self.ec2.assign_addresses(eni_id, self.request(1)).await;
        }
        match result {
            Ok(cidrs) => {
                self.node.datastore().add_cidrs(eni_id, &cidrs)?;
                tracing::info!(eni = eni_id, added = cidrs.len(), "addresses assigned");
                Ok(Step::Changed)
            }
            Err(e) if e.code() == Some(ec2::PRIVATE_IP_LIMIT_EXCEEDED) => {
                self.adopt_full_eni(eni_id).await
            }
            Err(e) => Err(self.note_subnet_full(e)),
        }
    }

    fn handled_specially(&self, e: &Ec2Error) -> bool {
        matches!(
            e.code(),
            Some(
                ec2::PRIVATE_IP_LIMIT_EXCEEDED
                    | ec2::INSUFFICIENT_FREE_ADDRESSES
                    | ec2::INSUFFICIENT_CIDR_BLOCKS
            )
        )
    }

    /// EC2 says the ENI holds its maximum although we know fewer addresses: take what it
    /// has (after a restart with stale data) and stop asking for more on this ENI.
    async fn adopt_full_eni(&mut self, eni_id: &str) -> Result<Step, ManagerError> {
        let described = self.ec2.describe_eni(eni_id).await?;
        let mut ds = self.node.datastore();
        ds.add_cidrs(eni_id, &described.cidrs())?;
        ds.set_full_at_ec2(eni_id, true)?;
        tracing::info!(
            eni = eni_id,
            addresses = described.cidrs().len(),
            "eni full at ec2, adopted its addresses"
        );
        Ok(Step::Changed)
    }

    fn note_subnet_full(&mut self, e: Ec2Error) -> ManagerError {
        if matches!(
            e.code(),
            Some(ec2::INSUFFICIENT_FREE_ADDRESSES | ec2::INSUFFICIENT_CIDR_BLOCKS)
        ) {
            self.backoff_until = Some(Instant::now() + SUBNET_FULL_BACKOFF);
            tracing::warn!(error = %e, backoff_s = SUBNET_FULL_BACKOFF.as_secs(), "subnet out of addresses, backing off");
        }
        e.into()
    }

    /// Create, attach at the lowest free device index, mark delete-on-termination, plumb.
    /// A new ENI that cannot be attached or plumbed is deleted again.
    async fn add_eni(&mut self, n: u32) -> Result<Step, ManagerError> {
        let id = &self.node.identity;
        let config = &self.node.config;
        let new = NewEni {
            subnet_id: &id.subnet_id,
            security_groups: &id.security_groups,
            description: ec2::eni_description(&id.instance_id),
            tags: ec2::eni_tags(
                &id.instance_id,
                config.cluster_name.as_deref(),
                &config.additional_eni_tags,
                SystemTime::now(),
            ),
            addresses: self.request(n),
        };
        let created = match self.ec2.create_eni(&new).await {
            Ok(created) => created,
            Err(e) => return Err(self.note_subnet_full(e)),
        };
        tracing::info!(eni = %created.id, requested = n, "eni created");
        match self.attach_and_plumb(&created).await {
            Ok(info) => {
                let mut ds = self.node.datastore();
                ds.add_eni(info, SystemTime::now());
                ds.add_cidrs(&created.id, &created.cidrs())?;
                Ok(Step::Changed)
            }
            Err(e) => {
                if let Err(del) = self.ec2.delete_eni(&created.id).await {
                    tracing::warn!(eni = %created.id, error = %del, "delete of unusable eni failed");
                }
                Err(e)
            }
        }
    }

    async fn attach_and_plumb(
        &self,
        created: &ec2::EniDescription,
    ) -> Result<EniInfo, ManagerError> {
        let instance = &self.node.identity.instance_id;
        let used: Vec<u32> = self
            .ec2
            .attached_enis(instance)
            .await?
            .iter()
            .map(|(_, i)| *i)
            .collect();
        let index = ec2::lowest_free_device_index(&used)
            .ok_or_else(|| Ec2Error::NoDeviceIndex(instance.clone()))?;
        let attachment = self.ec2.attach_eni(&created.id, instance, index).await?;
        tracing::info!(eni = %created.id, device_index = index, "eni attached");
        if let Err(e) = self
            .ec2
            .set_delete_on_termination(&created.id, &attachment)
            .await
        {
            tracing::warn!(eni = %created.id, error = %e, "could not set delete-on-termination");
        }
        let info = EniInfo {
            id: created.id.clone(),
            mac: created.mac.clone(),
            device_index: index,
            primary: false,
            primary_ip: created.primary_ip,
            subnet: self.node.identity.subnet_cidr,
        };
        if let Err(e) = self.host.setup_secondary_eni(&info).await {
            let _ = self.ec2.detach_eni(&attachment).await;
            self.wait_detached(&created.id).await;
            return Err(e.into());
        }
        Ok(info)
    }

    /// Gives back `want` free addresses or prefixes. They leave the assignable set before
    /// the EC2 call and return only if it fails, so no ADD can get an address EC2 is
    /// taking away.
    async fn shrink(&mut self, want: u32) -> Result<Step, ManagerError> {
        self.last_shrink = Some(Instant::now());
        let reserved = self
            .node
            .datastore()
            .reserve_free_cidrs(want, SystemTime::now());
        let mut changed = Step::Idle;
        for (eni_id, nets) in reserved {
            let result = self.ec2.unassign_addresses(&eni_id, &nets).await;
            let mut ds = self.node.datastore();
            ds.finish_release(&eni_id, &nets, result.is_ok());
            match result {
                Ok(()) => {
                    let _ = ds.set_full_at_ec2(&eni_id, false);
                    tracing::info!(eni = %eni_id, released = %cidr_list(&nets), "addresses returned to ec2");
                    changed = Step::Changed;
                }
                Err(e) => {
                    tracing::warn!(eni = %eni_id, error = %e, "unassign failed, addresses kept")
                }
            }
        }
        Ok(changed)
    }

    /// Detaches and deletes one idle secondary ENI the pool can do without.
    async fn free_idle_eni(
        &mut self,
        stats: &crate::datastore::Stats,
        usage: &[EniUsage],
    ) -> Result<Step, ManagerError> {
        let min_age = self.node.config.eni_min_age;
        let now = SystemTime::now();
        let (t, l) = (&self.node.targets, &self.node.limits);
        let candidate = usage.iter().rev().find(|u| {
            !u.primary
                && !u.deleting
                && now.duration_since(u.added).unwrap_or_default() >= min_age
                && pool::eni_removable(t, stats, &u.stats, l)
        });
        let Some(candidate) = candidate else {
            return Ok(Step::Idle);
        };
        let info = {
            let mut ds = self.node.datastore();
            if let Err(e) = ds.begin_eni_removal(&candidate.id, min_age, now) {
                // An ADD took one of its addresses since the usage snapshot.
                tracing::debug!(error = %e, "eni no longer idle");
                return Ok(Step::Idle);
            }
            ds.eni(&candidate.id).expect("marked above").info.clone()
        };
        let removed = self.remove_eni(&info).await;
        self.node
            .datastore()
            .finish_eni_removal(&info.id, removed.is_ok());
        removed.map(|()| Step::Changed)
    }

    async fn remove_eni(&self, info: &EniInfo) -> Result<(), ManagerError> {
        let described = self.ec2.describe_eni(&info.id).await?;
        let attachment = described
            .attachment
            .ok_or_else(|| ManagerError::NotAttached(info.id.clone()))?;
        self.ec2.detach_eni(&attachment.id).await?;
        tracing::info!(eni = %info.id, "eni detached");
        if let Err(e) = self.host.teardown_eni(info).await {
            tracing::warn!(eni = %info.id, error = %e, "eni host cleanup incomplete");
        }
        self.wait_detached(&info.id).await;
        if let Err(e) = self.ec2.delete_eni(&info.id).await {
            // Detached but not deleted: gone from this instance either way.
            tracing::warn!(eni = %info.id, error = %e, "detached eni could not be deleted");
        } else {
            tracing::info!(eni = %info.id, "eni deleted");
        }
        Ok(())
    }

    /// EC2 refuses to delete an ENI until the detach has finished.
    async fn wait_detached(&self, eni_id: &str) {
        let deadline = Instant::now() + DETACH_WAIT;
        while Instant::now() < deadline {
            match self.ec2.describe_eni(eni_id).await {
                Ok(eni) if eni.attachment.is_some() => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                _ => return,
            }
        }
    }
}

fn cidr_list(nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
