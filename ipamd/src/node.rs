//! The state every part of the daemon shares: identity, limits, the datastore and the
//! signals between the RPC handlers and the pool manager.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::config::Config;
use crate::datastore::{Datastore, Stats};
use crate::imds::Identity;
use crate::metrics::{Metrics, PoolGauges};
use crate::pool::{Limits, Targets};
use crate::sgp::service::PodEni;

pub struct Node {
    pub config: Config,
    pub identity: Identity,
    pub targets: Targets,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    datastore: Mutex<Datastore>,
    /// Wakes the pool manager right after an assign or release.
    pool_wake: Notify,
    /// Tells waiting ADDs the pool may have grown.
    pool_changed: Notify,
    terminating: AtomicBool,
    /// One ENI slot is the trunk's: attached, or kept free for it while it is being made.
    trunk_slot: AtomicBool,
    /// Security groups for pods, when ENABLE_POD_ENI is on.
    pub pod_eni: Option<Arc<PodEni>>,
}

impl Node {
    pub fn new(
        config: Config,
        identity: Identity,
        limits: Limits,
        metrics: Arc<Metrics>,
        datastore: Datastore,
    ) -> Self {
        Node {
            targets: Targets::from_config(&config),
            config,
            identity,
            limits,
            metrics,
            datastore: Mutex::new(datastore),
            pool_wake: Notify::new(),
            pool_changed: Notify::new(),
            terminating: AtomicBool::new(false),
            trunk_slot: AtomicBool::new(false),
            pod_eni: None,
        }
    }

    pub fn with_pod_eni(mut self, pod_eni: Arc<PodEni>) -> Self {
        self.pod_eni = Some(pod_eni);
        self
    }

    /// Takes (true) or gives back (false) the trunk's ENI slot.
    pub fn set_trunk_slot(&self, taken: bool) {
        let was = self.trunk_slot.swap(taken, Ordering::SeqCst);
        if was != taken {
            tracing::info!(taken, "trunk eni slot");
        }
    }

    pub fn trunk_slot_taken(&self) -> bool {
        self.trunk_slot.load(Ordering::SeqCst)
    }

    /// ENIs the address pool may have: the limit less the trunk's slot.
    pub fn max_enis(&self) -> u32 {
        let trunk = u32::from(self.trunk_slot_taken());
        self.limits.max_enis.saturating_sub(trunk)
    }

    /// The datastore lock. Never held across an await: EC2 and netlink calls happen outside.
    pub fn datastore(&self) -> MutexGuard<'_, Datastore> {
        self.datastore
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> Stats {
        self.datastore().stats(SystemTime::now())
    }

    pub fn wake_pool(&self) {
        self.pool_wake.notify_one();
    }

    pub async fn pool_woken(&self) {
        self.pool_wake.notified().await
    }

    pub fn announce_pool_change(&self) {
        self.pool_changed.notify_waiters();
    }

    pub async fn pool_changed(&self) {
        self.pool_changed.notified().await
    }

    /// After SIGTERM: no more ENI or address changes at EC2.
    pub fn set_terminating(&self) {
        self.terminating.store(true, Ordering::SeqCst);
    }

    pub fn is_terminating(&self) -> bool {
        self.terminating.load(Ordering::SeqCst)
    }

    pub fn gauges(&self) -> PoolGauges {
        let ds = self.datastore();
        let stats = ds.stats(SystemTime::now());
        let per_eni = if self.targets.prefix_mode {
            self.limits.slots_per_eni * crate::pool::IPS_PER_PREFIX
        } else {
            self.limits.slots_per_eni
        };
        PoolGauges {
            eni_max: self.max_enis(),
            ip_max: self.max_enis() * per_eni,
            eni_allocated: ds.enis().count() as u32,
            total_ip_addresses: stats.total,
            assigned_ip_addresses: stats.assigned,
        }
    }
}
