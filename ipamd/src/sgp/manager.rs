//! The branch manager: makes the trunk when the node has none, announces it to Kubernetes,
//! lets released branches out of their cooldown, releases branches whose pod is gone, and
//! keeps WARM_BRANCH_ENI_TARGET warm branches for each group set the node is likely to need.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use thiserror::Error;
use tokio::sync::watch;

use super::kube::EventKind;
use super::pool::Holder;
use super::service::{CreateError, PodEni};
use super::trunk::{self, Trunk, TrunkError};
use super::warm::{self, GroupSet, Inputs, Regroup};
use crate::datastore::{DatastoreError, Key};
use crate::ec2::Ec2Error;
use crate::node::Node;
use crate::sweep::{self, LeakSweep};

/// How often held branches are checked against the pods on the node.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
/// A branch held this briefly may serve a pod the cache has not seen yet.
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(60);
/// Failed trunk attempts before the ENI slot kept for it goes back to the address pool.
const TRUNK_SLOT_ATTEMPTS: u32 = 3;
/// Trunk attempts back off from two pool intervals, doubling, up to this.
const TRUNK_RETRY_CAP: Duration = Duration::from_secs(300);
/// Pause after a failed warm-pool step; doubles per failure up to the cap.
const FAILURE_BACKOFF_BASE: Duration = Duration::from_millis(500);
const FAILURE_BACKOFF_CAP: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum BranchManagerError {
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

/// What the node has been told about its trunk.
#[derive(Debug, Default)]
struct Announced {
    label: bool,
    capacity: bool,
}

pub struct BranchManager {
    node: Arc<Node>,
    pe: Arc<PodEni>,
    trunk_failures: u32,
    next_trunk_try: Instant,
    announced: Announced,
    next_announce: Instant,
    /// Held branches whose pod looked gone at the last reconcile, by key.
    suspects: BTreeMap<Key, String>,
    last_reconcile: Instant,
    /// Disassociated branches EC2 has not deleted yet.
    strays: Vec<String>,
    leaks: LeakSweep,
    failures: u32,
    paused_until: Option<Instant>,
}

impl BranchManager {
    pub fn new(node: Arc<Node>, pe: Arc<PodEni>) -> Self {
        let now = Instant::now();
        let leaks = LeakSweep::new(node.config.leak_sweep);
        BranchManager {
            node,
            pe,
            trunk_failures: 0,
            next_trunk_try: now,
            announced: Announced::default(),
            next_announce: now,
            suspects: BTreeMap::new(),
            last_reconcile: now,
            strays: Vec::new(),
            leaks,
            failures: 0,
            paused_until: None,
        }
    }

    /// Runs until `shutdown` turns true: a round every VPC_CNI_POOL_INTERVAL_MS, after every
    /// take and release, and once a burst of takes has settled.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let interval = self.node.config.pool_interval;
        while !*shutdown.borrow() {
            self.round().await;
            let wait = self.pe.refill_wait().map_or(interval, |w| w.min(interval));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.pe.woken() => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!("branch manager stopped");
    }

    pub async fn round(&mut self) {
        if self.node.is_terminating() {
            return;
        }
        if self.pe.trunk().is_none() && self.pe.supported() {
            self.ensure_trunk().await;
        }
        let Some(trunk) = self.pe.trunk() else {
            return;
        };
        self.announce().await;
        self.cool();
        if self.last_reconcile.elapsed() >= RECONCILE_INTERVAL {
            self.last_reconcile = Instant::now();
            self.reconcile();
        }
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.delete_strays().await;
        if self.leaks.due() {
            self.sweep_leaks(&trunk).await;
        }
        // A trunk on a type without a known branch limit still serves the branches it has.
        if self.pe.refill_wait().is_some() || !self.pe.supported() {
            return;
        }
        match self.refill(&trunk).await {
            Ok(()) => self.failures = 0,
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &BranchManagerError) {
        self.failures = self.failures.saturating_add(1);
        let pause = FAILURE_BACKOFF_BASE
            .saturating_mul(1 << self.failures.min(7))
            .min(FAILURE_BACKOFF_CAP);
        self.paused_until = Some(Instant::now() + pause);
        tracing::warn!(
            error = %e,
            failures = self.failures,
            pause_ms = pause.as_millis() as u64,
            "warm branch step failed"
        );
    }

    /// Creates the trunk. Its ENI slot stays kept from the address pool while attempts fail,
    /// up to [`TRUNK_SLOT_ATTEMPTS`]; after that the pool may have it, and later attempts
    /// succeed only if a slot is free.
    async fn ensure_trunk(&mut self) {
        if Instant::now() < self.next_trunk_try {
            return;
        }
        self.node.set_trunk_slot(true);
        let result = trunk::create(
            &self.node,
            &self.pe.ec2,
            &self.pe.host,
            self.pe.instance_max_enis,
        )
        .await;
        match result {
            Ok(t) => self.trunk_ready(t).await,
            Err(TrunkError::NoSlot { attached, max }) => {
                self.node.set_trunk_slot(false);
                self.next_trunk_try = Instant::now() + TRUNK_RETRY_CAP;
                tracing::warn!(
                    attached,
                    max,
                    "no free eni slot for the trunk eni, branch pods cannot run here"
                );
            }
            Err(e) => self.trunk_failed(&e).await,
        }
    }

    async fn trunk_ready(&mut self, t: Trunk) {
        self.trunk_failures = 0;
        self.node.set_trunk_slot(true);
        let note = format!(
            "trunk eni {} attached at device index {}",
            t.eni_id, t.device_index
        );
        self.pe.set_trunk(t);
        self.pe
            .event(EventKind::Normal, "NodeTrunkInitiated", &note)
            .await;
    }

    async fn trunk_failed(&mut self, e: &TrunkError) {
        self.trunk_failures += 1;
        let delay = self
            .node
            .config
            .pool_interval
            .saturating_mul(1 << self.trunk_failures.min(10))
            .min(TRUNK_RETRY_CAP);
        self.next_trunk_try = Instant::now() + delay;
        tracing::error!(
            error = %e,
            attempts = self.trunk_failures,
            retry_in_s = delay.as_secs(),
            "trunk eni creation failed"
        );
        if self.trunk_failures >= TRUNK_SLOT_ATTEMPTS {
            self.node.set_trunk_slot(false);
            tracing::warn!("eni slot kept for the trunk goes back to the address pool");
        }
        let note = format!("trunk eni not attached: {e}");
        self.pe
            .event(EventKind::Warning, "TrunkENICreationFailed", &note)
            .await;
    }

    /// The trunk label and the branch capacity on the node, retried until both are written.
    async fn announce(&mut self) {
        let a = &self.announced;
        if (a.label && a.capacity) || Instant::now() < self.next_announce {
            return;
        }
        let kube = &self.pe.kube;
        if !self.announced.label {
            match kube.label_trunk(true).await {
                Ok(()) => self.announced.label = true,
                Err(e) => tracing::warn!(error = %e, "could not label the node"),
            }
        }
        if !self.announced.capacity {
            match kube.advertise_branch_capacity(self.pe.limit.count()).await {
                Ok(()) => self.announced.capacity = true,
                Err(e) => tracing::warn!(error = %e, "could not advertise the branch capacity"),
            }
        }
        self.next_announce = Instant::now() + RECONCILE_INTERVAL;
    }

    /// Branches past their cooldown are warm again.
    fn cool(&self) {
        let (now, cooldown) = (SystemTime::now(), self.pe.cooldown);
        match self.pe.commit(&self.node, |p| p.cool(now, cooldown)) {
            Ok(ids) => {
                for id in ids {
                    tracing::info!(eni = %id, "branch eni out of its cooldown, warm again");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not record cooled branches"),
        }
    }

    /// Releases branches whose pod is gone, was replaced or completed. Only against a synced
    /// cache (a store is replaced whole on every relist, so it never shows a partial list),
    /// and only when two reconciles in a row saw the pod missing.
    fn reconcile(&mut self) {
        if !self.pe.caches.synced() {
            tracing::debug!("caches not synced, held branches not checked");
            return;
        }
        let now = SystemTime::now();
        let holders: Vec<Holder> = self
            .pe
            .pool()
            .branches()
            .filter_map(|b| b.holder().cloned())
            .filter(|h| now.duration_since(h.since).unwrap_or_default() >= ORPHAN_MIN_AGE)
            .collect();
        let mut suspects = BTreeMap::new();
        for h in holders {
            let pod = self.pe.caches.pod(&h.namespace, &h.name);
            let Some(why) = orphan_reason(&h, pod.as_deref()) else {
                continue;
            };
            if self.suspects.contains_key(&h.key) {
                self.release_orphan(&h, why);
            } else {
                suspects.insert(h.key.clone(), why.to_string());
            }
        }
        self.suspects = suspects;
    }

    fn release_orphan(&self, h: &Holder, why: &str) {
        match self.pe.release(&self.node, &h.key) {
            Ok(Some(b)) => tracing::info!(
                eni = %b.eni_id,
                vlan_id = b.vlan_id,
                pod = %format!("{}/{}", h.namespace, h.name),
                reason = why,
                "branch eni released, its pod is gone"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not release an orphaned branch"),
        }
    }

    /// Deletion retries of disassociated branches.
    async fn delete_strays(&mut self) {
        let mut left = Vec::new();
        for eni in std::mem::take(&mut self.strays) {
            match self.pe.ec2.delete_eni(&eni).await {
                Ok(()) => tracing::info!(eni = %eni, "branch eni deleted"),
                Err(_) => left.push(eni),
            }
        }
        self.strays = left;
    }

    /// Deletes this node's branch ENIs that are neither in the pool nor on the trunk once two
    /// sweeps in a row found them (see `sweep`).
    async fn sweep_leaks(&mut self, trunk: &Trunk) {
        let ec2 = &self.pe.ec2;
        let instance = &self.node.identity.instance_id;
        let found = tokio::try_join!(
            ec2.enis_tagged(crate::ec2::TAG_INSTANCE_ID, instance),
            ec2.trunk_associations(&trunk.eni_id),
        );
        let (tagged, associations) = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for leaked branch enis");
                self.leaks.skipped();
                return;
            }
        };
        // Creations first, then the pool: a branch leaves the one only after entering the other.
        let creating = self.pe.creating();
        let pool = self.pe.pool();
        let branches = super::restore::unassociated_branches(&tagged, &associations)
            .into_iter()
            .filter(|id| !creating.contains(id) && pool.get(id).is_none());
        // A trunk whose attach and clean-up failed; the live one is attached. Trunks are made
        // on this task only, so none is half made now.
        let trunks = sweep::unattached(&tagged, trunk::TRUNK_DESCRIPTION);
        let unused = branches.chain(trunks);
        let what = "leaked branch or trunk eni";
        self.leaks.delete_confirmed(ec2, unused, what).await;
    }

    async fn refill(&mut self, trunk: &Trunk) -> Result<(), BranchManagerError> {
        if !self.pe.caches.synced() {
            return Ok(());
        }
        let needed = warm::needed_sets(
            self.pe.node_groups.clone(),
            self.pe.caches.likely_group_sets(),
        );
        let pool = self.pe.pool();
        let counts = pool.counts();
        let warm = pool.warm();
        let plan = warm::plan(&Inputs {
            target: self.pe.warm_target,
            needed: &needed,
            warm: &warm,
            cooling: counts.cooling,
            in_use: counts.in_use,
            branch_limit: counts.limit,
        });
        for r in &plan.regroup {
            self.regroup(r).await?;
        }
        for (set, n) in &plan.create {
            for _ in 0..*n {
                self.create(trunk, set).await?;
            }
        }
        for eni in &plan.delete {
            self.delete(eni).await?;
        }
        Ok(())
    }

    async fn regroup(&self, r: &Regroup) -> Result<(), BranchManagerError> {
        let Some(branch) = self.pe.commit(&self.node, |p| p.begin_change(&r.eni_id))? else {
            return Ok(());
        };
        let ids: Vec<String> = r.to.ids().map(str::to_string).collect();
        let result = self.pe.ec2.set_security_groups(&branch.eni_id, &ids).await;
        let groups = if result.is_ok() { &r.to } else { &r.from };
        self.pe.commit(&self.node, |p| {
            p.finish_change(&branch.eni_id, groups.clone())
        })?;
        result?;
        tracing::info!(
            eni = %branch.eni_id,
            from = %r.from,
            to = %r.to,
            "warm branch eni regrouped"
        );
        Ok(())
    }

    async fn create(&self, trunk: &Trunk, set: &GroupSet) -> Result<(), BranchManagerError> {
        let Ok(vlan_id) = self.pe.commit(&self.node, |p| p.reserve_vlan())? else {
            return Ok(());
        };
        match self.pe.create_branch(&self.node, trunk, set, vlan_id).await {
            Ok(branch) => {
                let eni = branch.eni_id.clone();
                let inserted = self.pe.commit(&self.node, |p| p.insert(branch));
                self.pe.created(&eni);
                inserted?;
                tracing::info!(eni = %eni, vlan_id, groups = %set, "warm branch eni created");
                Ok(())
            }
            Err(e) => {
                self.pe.creation_failed(&self.node, vlan_id, &e)?;
                Err(e.into())
            }
        }
    }

    /// Disassociates and deletes a warm branch nobody needs. Once disassociated its VLAN id
    /// is free, whether or not EC2 deletes it at once.
    async fn delete(&mut self, eni_id: &str) -> Result<(), BranchManagerError> {
        let Some(branch) = self.pe.commit(&self.node, |p| p.begin_change(eni_id))? else {
            return Ok(());
        };
        if let Err(e) = self
            .pe
            .ec2
            .disassociate_branch(&branch.association_id)
            .await
        {
            let groups = branch.groups.clone();
            self.pe
                .commit(&self.node, |p| p.finish_change(eni_id, groups))?;
            return Err(e.into());
        }
        self.pe.commit(&self.node, |p| p.remove(eni_id))?;
        match self.pe.ec2.delete_eni(eni_id).await {
            Ok(()) => {
                tracing::info!(eni = %eni_id, vlan_id = branch.vlan_id, "spare branch eni deleted")
            }
            Err(e) => {
                tracing::warn!(
                    eni = %eni_id,
                    error = %e,
                    "disassociated branch eni not deleted yet, retrying later"
                );
                self.strays.push(eni_id.to_string());
            }
        }
        Ok(())
    }
}

/// Why a held branch's pod counts as gone, if it does.
fn orphan_reason(h: &Holder, pod: Option<&Pod>) -> Option<&'static str> {
    let Some(pod) = pod else {
        return Some("pod is gone");
    };
    if !h.uid.is_empty() && pod.uid().as_deref() != Some(h.uid.as_str()) {
        return Some("pod was replaced");
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed")).then_some("pod completed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    fn holder(uid: &str) -> Holder {
        Holder {
            key: Key::new("aws-cni", "c1", "eth0"),
            namespace: "shop".into(),
            name: "catalog-0".into(),
            uid: uid.into(),
            since: SystemTime::UNIX_EPOCH,
        }
    }

    fn pod(uid: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("catalog-0".into()),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn gone_replaced_and_completed_pods_release_their_branch() {
        assert_eq!(orphan_reason(&holder("u1"), None), Some("pod is gone"));
        assert_eq!(
            orphan_reason(&holder("u1"), Some(&pod("u2", "Running"))),
            Some("pod was replaced")
        );
        for phase in ["Succeeded", "Failed"] {
            assert_eq!(
                orphan_reason(&holder("u1"), Some(&pod("u1", phase))),
                Some("pod completed")
            );
        }
        assert_eq!(
            orphan_reason(&holder("u1"), Some(&pod("u1", "Running"))),
            None
        );
        assert_eq!(
            orphan_reason(&holder(""), Some(&pod("u9", "Pending"))),
            None
        );
    }
}
