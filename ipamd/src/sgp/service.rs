//! Security groups for pods at run time: the trunk, the branch pool and the Kubernetes caches,
//! and what an ADD or DEL of a branch pod does with them.
//!
//! A pod gets a branch ENI when its first container's limits name `vpc.amazonaws.com/pod-eni`
//! (what the VPC Resource Controller's webhook injects) or when a SecurityGroupPolicy of its
//! namespace selects it: without the webhook the policy alone still decides, so a selected pod
//! is never quietly left on the node's groups. Policies are read at ADD time; later edits do
//! not change a running pod. A pod with the resource that no policy selects gets the node's
//! groups, as the controller gives it.
//!
//! An ADD takes a warm branch with exactly the pod's groups (no EC2 call), else regroups a
//! warm one (one call), else makes one; the pod-eni annotation is written UID-guarded, and the
//! reply names the VLAN, the branch's MAC, its subnet gateway and the trunk link. A DEL lets
//! the branch cool down before any pod may have it again; DEL uses only ipamd's own record,
//! never the pod object, so a pod already deleted or completed still gives its branch back.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use thiserror::Error;
use tokio::sync::Notify;
use vpc_cni::cni::netconf::SgEnforcingMode;

use super::annotation::{self, POD_ENI_ANNOTATION};
use super::kube::{self as k8s, Caches, EventKind, KubeError, NodeClient};
use super::limits::{self, BranchLimit};
use super::pool::{Branch, BranchPool, Holder, Take};
use super::restore::{self, Found};
use super::trunk::{self, Trunk};
use super::warm::GroupSet;
use crate::checkpoint::CheckpointBranch;
use crate::config::Config;
use crate::datastore::{Datastore, DatastoreError, Key};
use crate::ec2::{self, Ec2, Ec2Error, EniDescription};
use crate::host::{Host, HostError};
use crate::imds::Identity;
use crate::node::Node;

/// How long start-up waits for the watch caches before serving anyway (branch ADDs then
/// wait for them).
const SYNC_WAIT: Duration = Duration::from_secs(60);
/// After a pod took a branch, the warm pool is refilled only once no other pod took one for
/// this long, so a burst of pods is refilled in one pass instead of one EC2 round per pod.
pub const REFILL_SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum PodEniError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("restore branch enis: {0}")]
    Ec2(#[from] Ec2Error),
    #[error("trunk eni setup: {0}")]
    Host(#[from] HostError),
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

/// What an ADD of a pod becomes.
#[derive(Debug)]
pub enum AddOutcome {
    /// Not a branch pod: a regular address from the pool.
    Regular,
    Branch(Box<Granted>),
    /// A branch pod that cannot be served now; the reason goes to the plugin.
    Refused(String),
}

#[derive(Debug, Clone)]
pub struct Granted {
    pub branch: Branch,
    pub parent_ifindex: u32,
}

struct State {
    trunk: Option<Trunk>,
    pool: BranchPool,
}

pub struct PodEni {
    pub enforcing_mode: SgEnforcingMode,
    pub limit: BranchLimit,
    pub warm_target: u32,
    pub cooldown: Duration,
    /// Groups of a pod that asks for a branch but no policy selects; the warm pool keeps
    /// branches of this set too.
    pub node_groups: GroupSet,
    pub instance_type: String,
    /// The instance type's ENI limit, for placing the trunk.
    pub instance_max_enis: u32,
    pub caches: Caches,
    pub kube: NodeClient,
    pub(crate) ec2: Ec2,
    pub(crate) host: Arc<Host>,
    state: Mutex<State>,
    /// Branch ENIs created and not yet in the pool (being associated), which the leak sweep
    /// must not take for leaked.
    creating: Mutex<BTreeSet<String>>,
    wake: Notify,
    last_take: Mutex<Option<Instant>>,
}

/// What start-up hands over.
pub struct Startup<'a> {
    pub config: &'a Config,
    pub identity: &'a Identity,
    pub ec2: Ec2,
    pub host: Arc<Host>,
    pub instance_max_enis: u32,
    pub trunk: Option<&'a EniDescription>,
    pub records: Vec<CheckpointBranch>,
}

impl PodEni {
    /// Connects to the API server (waiting until it answers), starts and syncs the caches,
    /// moves the local rule in strict mode, and rebuilds trunk and branches.
    pub async fn start(s: Startup<'_>, ds: &mut Datastore) -> Result<Self, PodEniError> {
        let settings = &s.config.pod_eni;
        let node_name = settings.node_name.as_deref().unwrap_or_default();
        let client = k8s::client(settings.kubeconfig.as_deref()).await?;
        k8s::wait_for_api(&client).await;
        let watched = k8s::policies_installed(&client).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not check for the SecurityGroupPolicy resource");
            true
        });
        if !watched {
            tracing::warn!(
                resource = k8s::POD_ENI_RESOURCE,
                "SecurityGroupPolicy not installed, only pods requesting the resource get branches"
            );
        }
        let caches = Caches::start_with(&client, node_name, watched);
        if let Err(e) = caches.wait_synced(SYNC_WAIT).await {
            tracing::warn!(error = %e, "kubernetes caches not synced, branch pods wait for them");
        }
        let limit = limits::branch_limit(&s.identity.instance_type);
        let me = PodEni {
            enforcing_mode: settings.enforcing_mode,
            limit,
            warm_target: settings.warm_branch_target,
            cooldown: settings.branch_cooldown,
            node_groups: GroupSet::new(s.identity.security_groups.iter().cloned()),
            instance_type: s.identity.instance_type.clone(),
            instance_max_enis: s.instance_max_enis,
            caches,
            kube: NodeClient::new(client, node_name),
            ec2: s.ec2,
            host: s.host,
            state: Mutex::new(State {
                trunk: None,
                pool: BranchPool::new(limit.count()),
            }),
            creating: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            last_take: Mutex::new(None),
        };
        me.report_limit().await;
        if me.enforcing_mode == SgEnforcingMode::Strict {
            me.move_local_rule().await?;
            warn_about_early_demux();
            warn_about_link_local();
        }
        me.restore(s.identity, s.trunk, &s.records).await?;
        ds.set_branch_records(me.lock().pool.records())?;
        Ok(me)
    }

    /// A type that cannot trunk is said so once, in the log and on the node.
    async fn report_limit(&self) {
        let note = match self.limit {
            BranchLimit::Supported(n) => {
                tracing::info!(
                    instance_type = %self.instance_type,
                    branch_limit = n,
                    "security groups for pods enabled"
                );
                return;
            }
            BranchLimit::Unsupported => {
                format!(
                    "instance type {} cannot have a trunk eni",
                    self.instance_type
                )
            }
            BranchLimit::Unknown => format!(
                "instance type {} has no known branch eni limit",
                self.instance_type
            ),
        };
        let note = format!("{note}: security groups for pods are off, regular pods are served");
        tracing::warn!(instance_type = %self.instance_type, "{note}");
        self.event(EventKind::Warning, "Unsupported", &note).await;
    }

    /// Strict enforcement needs `lookup local` after the branch pods' prio-10 rules.
    async fn move_local_rule(&self) -> Result<(), HostError> {
        if self.host.move_local_rule().await? {
            tracing::info!(
                priority = crate::host::LOCAL_RULE_PRIORITY,
                "local table rule moved for strict security group enforcement"
            );
        }
        Ok(())
    }

    /// Sets up an attached trunk and rebuilds its branches from EC2 and the checkpoint.
    async fn restore(
        &self,
        identity: &Identity,
        trunk: Option<&EniDescription>,
        records: &[CheckpointBranch],
    ) -> Result<(), PodEniError> {
        let Some(described) = trunk else {
            for r in records {
                tracing::warn!(
                    eni = %r.eni_id,
                    vlan_id = r.vlan_id,
                    "no trunk eni attached, branch record dropped"
                );
            }
            return Ok(());
        };
        let trunk = Trunk::from_description(described);
        let info = trunk::host_info(described, identity.subnet_cidr);
        self.host.setup_trunk_eni(&info).await?;
        let tagged = self
            .ec2
            .enis_tagged(ec2::TAG_INSTANCE_ID, &identity.instance_id)
            .await?;
        let associations = self.ec2.trunk_associations(&trunk.eni_id).await?;
        let subnets = BTreeMap::from([(identity.subnet_id.clone(), identity.subnet_cidr)]);
        let rebuilt = restore::rebuild(&Found {
            branch_limit: self.limit.count(),
            associations: &associations,
            tagged: &tagged,
            records,
            subnets: &subnets,
        });
        self.log_rebuilt(&rebuilt);
        for eni in &rebuilt.to_delete {
            match self.ec2.delete_eni(eni).await {
                Ok(()) => tracing::info!(eni = %eni, "deleted a branch eni that is on no trunk"),
                Err(e) => {
                    tracing::warn!(eni = %eni, error = %e, "could not delete a stray branch eni")
                }
            }
        }
        let mut state = self.lock();
        state.trunk = Some(trunk);
        state.pool = rebuilt.pool;
        Ok(())
    }

    fn log_rebuilt(&self, rebuilt: &restore::Rebuilt) {
        for r in &rebuilt.dropped {
            tracing::warn!(
                eni = %r.eni_id,
                vlan_id = r.vlan_id,
                "branch of the checkpoint is not on the trunk any more, dropped"
            );
        }
        for a in &rebuilt.foreign {
            tracing::info!(
                eni = %a.branch_eni,
                vlan_id = a.vlan_id,
                "vlan id taken by a branch ipamd does not manage"
            );
        }
        let counts = rebuilt.pool.counts();
        tracing::info!(warm = counts.warm, cooling = counts.cooling, in_use = counts.in_use,
            vlans = ?rebuilt.pool.vlans_in_use(), "branch enis restored");
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn trunk(&self) -> Option<Trunk> {
        self.lock().trunk.clone()
    }

    pub fn set_trunk(&self, trunk: Trunk) {
        self.lock().trunk = Some(trunk);
        self.wake.notify_one();
    }

    pub fn supported(&self) -> bool {
        matches!(self.limit, BranchLimit::Supported(n) if n > 0)
    }

    /// A copy of the pool, for introspection and planning.
    pub fn pool(&self) -> BranchPool {
        self.lock().pool.clone()
    }

    /// Branch ENIs under creation: created in EC2, not yet in the pool.
    pub fn creating(&self) -> BTreeSet<String> {
        self.creating.lock().expect("creating lock").clone()
    }

    /// Ends a branch's creation, once it is in the pool or deleted again.
    pub fn created(&self, eni_id: &str) {
        self.creating.lock().expect("creating lock").remove(eni_id);
    }

    /// Applies `change` to the pool and writes the checkpoint when the held or cooling
    /// branches changed; a failed write leaves the pool as it was.
    pub fn commit<T>(
        &self,
        node: &Node,
        change: impl FnOnce(&mut BranchPool) -> T,
    ) -> Result<T, DatastoreError> {
        let mut state = self.lock();
        let mut next = state.pool.clone();
        let out = change(&mut next);
        let records = next.records();
        let mut ds = node.datastore();
        if ds.branch_records() != records.as_slice() {
            ds.set_branch_records(records)?;
        }
        state.pool = next;
        Ok(out)
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn woken(&self) {
        self.wake.notified().await
    }

    fn took(&self) {
        *self.last_take.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.wake.notify_one();
    }

    /// How long the warm pool still waits after the last take, if at all.
    pub fn refill_wait(&self) -> Option<Duration> {
        let last = *self.last_take.lock().unwrap_or_else(|p| p.into_inner());
        last.and_then(|at| REFILL_SETTLE.checked_sub(at.elapsed()))
    }

    /// Records an event on the node; failures are only logged (the node may not exist yet).
    pub async fn event(&self, kind: EventKind, reason: &str, note: &str) {
        if let Err(e) = self.kube.node_event(kind, reason, note).await {
            tracing::warn!(reason, error = %e, "could not record a node event");
        }
    }

    /// Decides and serves an ADD; only a checkpoint write failure is an error.
    pub async fn add(
        &self,
        node: &Node,
        key: &Key,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<AddOutcome, DatastoreError> {
        if name.is_empty() {
            return Ok(AddOutcome::Regular);
        }
        let pod = match self.find_pod(namespace, name, uid).await {
            Ok(Some(pod)) => pod,
            Ok(None) => {
                tracing::debug!("pod not known to the api server, serving it a regular address");
                return Ok(AddOutcome::Regular);
            }
            Err(e) => return Ok(AddOutcome::Refused(e.to_string())),
        };
        let pod_uid = pod.uid().unwrap_or_default();
        if !uid.is_empty() && uid != pod_uid {
            let why = format!("pod {namespace}/{name} is now uid {pod_uid}, not {uid}");
            return Ok(AddOutcome::Refused(why));
        }
        let groups = match self.branch_groups(&pod) {
            Ok(Some(groups)) => groups,
            Ok(None) => return Ok(AddOutcome::Regular),
            Err(why) => return Ok(AddOutcome::Refused(why)),
        };
        let holder = Holder {
            key: key.clone(),
            namespace: namespace.into(),
            name: name.into(),
            uid: pod_uid,
            since: SystemTime::now(),
        };
        self.grant(node, &pod, &holder, &groups).await
    }

    /// The pod from the cache, or from the API server when the cache lacks it or still has
    /// an older pod of the same name.
    async fn find_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Option<Arc<Pod>>, KubeError> {
        if let Some(pod) = self.caches.pod(namespace, name) {
            if uid.is_empty() || pod.uid().as_deref() == Some(uid) {
                return Ok(Some(pod));
            }
        }
        Ok(self.kube.get_pod(namespace, name).await?.map(Arc::new))
    }

    /// The pod's groups when it gets a branch, `None` for a regular pod.
    fn branch_groups(&self, pod: &Pod) -> Result<Option<GroupSet>, String> {
        if !self.caches.synced() {
            return Err("kubernetes watch caches are not synced yet".into());
        }
        let requested = k8s::wants_branch(pod);
        let matched = self
            .caches
            .security_groups_for(pod)
            .map_err(|e| format!("security groups of the pod: {e}"))?;
        if matched.groups.is_empty() {
            return Ok(requested.then(|| self.node_groups.clone()));
        }
        tracing::debug!(
            policies = ?matched.policies,
            groups = ?matched.groups,
            requested,
            "pod selected for a branch eni"
        );
        Ok(Some(GroupSet::new(matched.groups)))
    }

    fn no_trunk_reason(&self) -> String {
        match self.limit {
            BranchLimit::Supported(_) => "the node's trunk eni is not attached yet".into(),
            _ => format!(
                "instance type {} supports no branch enis, the pod needs one",
                self.instance_type
            ),
        }
    }

    /// Takes a branch, writes the annotation and finds the trunk link; anything after the
    /// take that fails gives a branch the pod did not hold before back to the pool.
    async fn grant(
        &self,
        node: &Node,
        pod: &Pod,
        holder: &Holder,
        groups: &GroupSet,
    ) -> Result<AddOutcome, DatastoreError> {
        let Some(trunk) = self.trunk() else {
            return Ok(AddOutcome::Refused(self.no_trunk_reason()));
        };
        let (branch, fresh) = match self.take(node, &trunk, holder, groups).await? {
            Ok(taken) => taken,
            Err(why) => return Ok(AddOutcome::Refused(why)),
        };
        let linked = match self.annotate(pod, &branch).await {
            Ok(()) => self.trunk_link(&trunk).await,
            Err(why) => Err(why),
        };
        match linked {
            Ok(parent_ifindex) => Ok(AddOutcome::Branch(Box::new(Granted {
                branch,
                parent_ifindex,
            }))),
            Err(why) => {
                if fresh {
                    self.commit(node, |p| p.give_back(&branch.eni_id, &holder.key))?;
                }
                Ok(AddOutcome::Refused(why))
            }
        }
    }

    /// The branch for `holder` and whether it is new to the pod; the inner error is why none
    /// could be had.
    async fn take(
        &self,
        node: &Node,
        trunk: &Trunk,
        holder: &Holder,
        groups: &GroupSet,
    ) -> Result<Result<(Branch, bool), String>, DatastoreError> {
        let taken = self.commit(node, |p| p.take(holder, groups))?;
        match taken {
            Take::Held(branch) => Ok(Ok((branch, false))),
            Take::Warm(branch) => {
                self.took();
                tracing::info!(
                    eni = %branch.eni_id,
                    vlan_id = branch.vlan_id,
                    groups = %groups,
                    "warm branch eni assigned"
                );
                Ok(Ok((branch, true)))
            }
            Take::Regroup { branch, to } => {
                self.took();
                self.regroup(node, branch, to).await
            }
            Take::Create { vlan_id } => {
                self.took();
                self.create_for(node, trunk, holder, groups, vlan_id).await
            }
            Take::Exhausted(e) => Ok(Err(format!("no branch eni for the pod: {e}"))),
        }
    }

    async fn regroup(
        &self,
        node: &Node,
        mut branch: Branch,
        to: GroupSet,
    ) -> Result<Result<(Branch, bool), String>, DatastoreError> {
        let ids: Vec<String> = to.ids().map(str::to_string).collect();
        let result = self.ec2.set_security_groups(&branch.eni_id, &ids).await;
        self.commit(node, |p| {
            p.finish_regroup(&branch.eni_id, &to, result.is_ok())
        })?;
        match result {
            Ok(()) => {
                tracing::info!(
                    eni = %branch.eni_id,
                    vlan_id = branch.vlan_id,
                    from = %branch.groups,
                    to = %to,
                    "warm branch eni regrouped and assigned"
                );
                branch.groups = to;
                Ok(Ok((branch, true)))
            }
            Err(e) => Ok(Err(format!("regroup branch eni {}: {e}", branch.eni_id))),
        }
    }

    async fn create_for(
        &self,
        node: &Node,
        trunk: &Trunk,
        holder: &Holder,
        groups: &GroupSet,
        vlan_id: u16,
    ) -> Result<Result<(Branch, bool), String>, DatastoreError> {
        match self.create_branch(node, trunk, groups, vlan_id).await {
            Ok(mut branch) => {
                branch.state = super::pool::BranchState::Held(holder.clone());
                let inserted = self.commit(node, |p| p.insert(branch.clone()));
                self.created(&branch.eni_id);
                inserted?;
                tracing::info!(
                    eni = %branch.eni_id,
                    vlan_id,
                    groups = %groups,
                    "branch eni created for the pod"
                );
                Ok(Ok((branch, true)))
            }
            Err(e) => {
                self.creation_failed(node, vlan_id, &e)?;
                Ok(Err(e.to_string()))
            }
        }
    }

    /// Creates a branch ENI with `groups` and associates it with the trunk under `vlan_id`;
    /// a branch that cannot be associated is deleted again. The result is warm.
    pub async fn create_branch(
        &self,
        node: &Node,
        trunk: &Trunk,
        groups: &GroupSet,
        vlan_id: u16,
    ) -> Result<Branch, CreateError> {
        let ids: Vec<String> = groups.ids().map(str::to_string).collect();
        let new = trunk::new_branch(node, &ids, trunk::branch_tags(node, trunk, vlan_id));
        let eni = self
            .ec2
            .create_eni(&new)
            .await
            .map_err(CreateError::Create)?;
        // Until the caller has it in the pool; see `created`.
        self.creating
            .lock()
            .expect("creating lock")
            .insert(eni.id.clone());
        match self
            .ec2
            .associate_branch(&eni.id, &trunk.eni_id, vlan_id)
            .await
        {
            Ok(association_id) => Ok(Branch {
                eni_id: eni.id,
                mac: eni.mac,
                ip: eni.primary_ip,
                subnet: node.identity.subnet_cidr,
                vlan_id,
                association_id,
                groups: groups.clone(),
                state: super::pool::BranchState::Warm,
            }),
            Err(error) => {
                let deleted = self.ec2.delete_eni(&eni.id).await;
                self.created(&eni.id);
                if let Err(e) = &deleted {
                    tracing::warn!(
                        eni = %eni.id,
                        error = %e,
                        "could not delete the unassociated branch eni"
                    );
                }
                Err(CreateError::Associate {
                    eni: eni.id,
                    error,
                    deleted: deleted.is_ok(),
                })
            }
        }
    }

    /// Frees the VLAN id of a failed creation unless a branch may still hold it.
    pub fn creation_failed(
        &self,
        node: &Node,
        vlan_id: u16,
        e: &CreateError,
    ) -> Result<(), DatastoreError> {
        tracing::warn!(vlan_id, error = %e, "branch eni creation failed");
        if e.vlan_free() {
            self.commit(node, |p| p.abort_create(vlan_id))?;
        }
        Ok(())
    }

    /// The pod-eni annotation, unless the pod already carries exactly this one.
    async fn annotate(&self, pod: &Pod, branch: &Branch) -> Result<(), String> {
        let entries = [branch.annotation()];
        let value = annotation::render(&entries);
        if pod.annotations().get(POD_ENI_ANNOTATION) == Some(&value) {
            return Ok(());
        }
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let uid = pod.uid().unwrap_or_default();
        self.kube
            .annotate_pod(&namespace, &name, &uid, &entries)
            .await
            .map_err(|e| e.to_string())
    }

    async fn trunk_link(&self, trunk: &Trunk) -> Result<u32, String> {
        match self.host.link_index_by_mac(&trunk.eni_id, &trunk.mac).await {
            Ok(Some(index)) => Ok(index),
            Ok(None) => Err(format!(
                "trunk eni {} has no link with mac {} on the node",
                trunk.eni_id, trunk.mac
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Lets go of the branch held under `key`; it cools down before another pod may have it.
    pub fn release(&self, node: &Node, key: &Key) -> Result<Option<Branch>, DatastoreError> {
        let now = SystemTime::now();
        let released = self.commit(node, |p| p.release(key, now))?;
        if released.is_some() {
            self.wake();
        }
        Ok(released)
    }

    /// The branch a pod of this name holds, for telling apart a DEL of an older pod.
    pub fn held_by_pod(&self, namespace: &str, name: &str) -> Option<Branch> {
        self.lock().pool.held_by_pod(namespace, name).cloned()
    }

    pub fn held_by_key(&self, key: &Key) -> Option<Branch> {
        self.lock().pool.held_by_key(key).cloned()
    }

    /// Keys of `network` holding branches that GC may release: not in `valid`, held for at
    /// least `min_age`.
    pub fn collectable(
        &self,
        network: &str,
        valid: &HashSet<(String, String)>,
        min_age: Duration,
        now: SystemTime,
    ) -> Vec<Key> {
        let state = self.lock();
        state
            .pool
            .branches()
            .filter_map(|b| b.holder())
            .filter(|h| {
                h.key.network_name == network
                    && !valid.contains(&(h.key.container_id.clone(), h.key.if_name.clone()))
                    && now.duration_since(h.since).unwrap_or_default() >= min_age
            })
            .map(|h| h.key.clone())
            .collect()
    }
}

/// In strict mode the kubelet's probes leave through the primary ENI and come back through
/// the branch; with TCP early demux on, the kernel can match the returning SYN-ACK to the wrong
/// socket and probes time out. The init container turns it off (DISABLE_TCP_EARLY_DEMUX); the
/// value that counts is the one the kernel has now.
fn warn_about_early_demux() {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_early_demux";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() != "0" => tracing::warn!(
            sysctl = PATH,
            value = v.trim(),
            fix = "DISABLE_TCP_EARLY_DEMUX=true for the init container",
            "tcp early demux is on: kubelet probes of strict-mode branch pods can time out"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(sysctl = PATH, error = %e, "could not read"),
    }
}

/// Strict mode sends everything a branch pod emits through its branch ENI into the VPC, where
/// a link-local destination (169.254.0.0/16: a node-local agent such as the pod-identity
/// endpoint, or an address a mesh rewrites probes to) cannot be routed. aws-node behaves the
/// same; this says so where operators look, instead of leaving a silent hang to debug.
fn warn_about_link_local() {
    tracing::warn!(
        mode = "strict",
        fix = "POD_SECURITY_GROUP_ENFORCING_MODE=standard for pods that need node-local agents",
        "strict mode: pods with security groups cannot reach link-local addresses (169.254.0.0/16) on the node"
    );
}

#[derive(Debug, Error)]
pub enum CreateError {
    #[error("create branch eni: {0}")]
    Create(Ec2Error),
    #[error("associate branch eni {eni} with the trunk: {error}")]
    Associate {
        eni: String,
        error: Ec2Error,
        deleted: bool,
    },
}

impl CreateError {
    /// Whether the VLAN id is surely unused: nothing was made, or it was deleted again.
    pub fn vlan_free(&self) -> bool {
        match self {
            CreateError::Create(_) => true,
            CreateError::Associate { deleted, .. } => *deleted,
        }
    }
}
