//! The CNIBackend gRPC service the plugin calls, and its unix-socket server.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use vpc_cni_proto::cni_backend_server::{CniBackend, CniBackendServer};
use vpc_cni_proto::{
    AddNetworkReply, AddNetworkRequest, DelNetworkReply, DelNetworkRequest, GarbageCollectReply,
    GarbageCollectRequest, IpAllocationMetadata, ReleasedAttachment, StatusReply, StatusRequest,
    CONTRACT_VERSION,
};

use crate::datastore::{Assignment, DatastoreError, Key, PodMeta};
use crate::keys::KeyTable;
use crate::names;
use crate::node::Node;
use crate::sgp::pool::Branch;
use crate::sgp::service::{AddOutcome, Granted};

/// Route tables of branch pods: 100 + VLAN id, above every ENI table (device index + 1 ≤ 100).
pub const BRANCH_TABLE_BASE: u32 = 100;

/// How long an ADD waits for the pool manager to find an address before answering
/// Success=false (the plugin has a deadline of its own a little above this).
const ADD_WAIT: Duration = Duration::from_secs(5);
/// Re-check interval while an ADD waits (cooldowns expire without any notification).
const ADD_POLL: Duration = Duration::from_millis(200);
/// GarbageCollect leaves younger allocations alone: their ADD may still be finishing.
const GC_MIN_AGE: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum RpcError {
    #[error("socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

pub struct Backend {
    node: Arc<Node>,
    keys: KeyTable,
}

impl Backend {
    pub fn new(node: Arc<Node>) -> Self {
        Backend {
            node,
            keys: KeyTable::default(),
        }
    }
}

fn check_version(client: &str) -> Result<(), Status> {
    if client == CONTRACT_VERSION {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "client version {client:?} does not match ipamd version {CONTRACT_VERSION:?}"
    )))
}

fn metadata(a: &Assignment) -> IpAllocationMetadata {
    IpAllocationMetadata {
        i_pv4_addr: a.ip.to_string(),
        device_number: a.device_index as i32,
        route_table_id: a.route_table as i32,
        ..Default::default()
    }
}

/// The branch's primary address: no ENI device on the node, table 100 + VLAN id.
fn branch_metadata(b: &Branch) -> IpAllocationMetadata {
    IpAllocationMetadata {
        i_pv4_addr: b.ip.to_string(),
        device_number: -1,
        route_table_id: (BRANCH_TABLE_BASE + u32::from(b.vlan_id)) as i32,
        ..Default::default()
    }
}

fn persist_failure(e: DatastoreError) -> Status {
    tracing::error!(error = %e, "checkpoint write failed, change rolled back");
    Status::internal(e.to_string())
}

impl Backend {
    /// Assigns, or waits up to [`ADD_WAIT`] for the pool to grow; a DEL of the same key
    /// ends the wait.
    async fn assign(&self, key: &Key, meta: PodMeta) -> Result<Result<Assignment, String>, Status> {
        let guard = self.keys.enter_add(key);
        let _held = guard.lock().await;
        let cancel = guard.cancel().expect("add guard").clone();
        let deadline = Instant::now() + ADD_WAIT;
        loop {
            let result = self
                .node
                .datastore()
                .assign(key, meta.clone(), SystemTime::now());
            self.node.wake_pool();
            match result {
                Ok(a) => return Ok(Ok(a)),
                Err(DatastoreError::NoFreeAddress(stats)) => {
                    if Instant::now() >= deadline {
                        return Ok(Err(format!(
                            "no free address after {}s ({stats})",
                            ADD_WAIT.as_secs()
                        )));
                    }
                }
                Err(e) => return Err(persist_failure(e)),
            }
            if cancel.is_cancelled() {
                return Ok(Err("a DEL for this attachment arrived while waiting".into()));
            }
            tokio::select! {
                _ = self.node.pool_changed() => {}
                _ = tokio::time::sleep(ADD_POLL) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }

    fn vpc_cidrs(&self) -> Vec<String> {
        let cidrs = &self.node.identity.vpc_cidrs;
        cidrs.iter().map(|c| c.to_string()).collect()
    }

    fn add_reply(&self, a: &Assignment) -> AddNetworkReply {
        AddNetworkReply {
            success: true,
            ip_allocation_metadata: vec![metadata(a)],
            vp_cv4_cid_rs: self.vpc_cidrs(),
            eniid: a.eni_id.clone(),
            subnet_cidr: a.subnet.to_string(),
            ..Default::default()
        }
    }

    fn branch_reply(&self, g: &Granted) -> AddNetworkReply {
        let b = &g.branch;
        AddNetworkReply {
            success: true,
            ip_allocation_metadata: vec![branch_metadata(b)],
            vp_cv4_cid_rs: self.vpc_cidrs(),
            pod_vlan_id: i32::from(b.vlan_id),
            pod_enimac: b.mac.clone(),
            pod_eni_subnet_gw: crate::host::gateway(&b.subnet).to_string(),
            parent_if_index: g.parent_ifindex as i32,
            eniid: b.eni_id.clone(),
            subnet_cidr: b.subnet.to_string(),
            ..Default::default()
        }
    }

    /// A branch for the pod when it gets one; `None` for a regular pod. Runs under the key's
    /// lock, so a repeated ADD waits for the first.
    async fn add_branch(
        &self,
        key: &Key,
        r: &AddNetworkRequest,
    ) -> Result<Option<AddNetworkReply>, Status> {
        let Some(pe) = &self.node.pod_eni else {
            return Ok(None);
        };
        let guard = self.keys.enter_add(key);
        let _held = guard.lock().await;
        if self.node.datastore().allocation(key).is_some() {
            // Served as a regular pod before: a repeated ADD gets the same address.
            return Ok(None);
        }
        let outcome = pe
            .add(
                &self.node,
                key,
                &r.k8s_pod_namespace,
                &r.k8s_pod_name,
                &r.k8s_pod_uid,
            )
            .await
            .map_err(persist_failure)?;
        let reply = match outcome {
            AddOutcome::Regular => return Ok(None),
            AddOutcome::Branch(g) => {
                tracing::info!(
                    eni = %g.branch.eni_id,
                    vlan_id = g.branch.vlan_id,
                    ip = %g.branch.ip,
                    parent_ifindex = g.parent_ifindex,
                    "branch eni assigned"
                );
                self.branch_reply(&g)
            }
            AddOutcome::Refused(reason) => {
                tracing::warn!(reason = %reason, "branch pod not served");
                AddNetworkReply {
                    success: false,
                    failure_reason: reason,
                    ..Default::default()
                }
            }
        };
        Ok(Some(reply))
    }

    /// Releases the branch held under the key, if any, under the key's lock.
    async fn release_branch(
        &self,
        key: &Key,
        r: &DelNetworkRequest,
    ) -> Result<Option<Branch>, Status> {
        let Some(pe) = &self.node.pod_eni else {
            return Ok(None);
        };
        let guard = self.keys.enter_del(key);
        let _held = guard.lock().await;
        let released = pe.release(&self.node, key).map_err(persist_failure)?;
        match &released {
            Some(b) => {
                tracing::info!(
                    eni = %b.eni_id,
                    vlan_id = b.vlan_id,
                    cooldown_s = pe.cooldown.as_secs(),
                    "branch eni released"
                )
            }
            None => {
                // A DEL for an older pod of the same name leaves the newer pod's branch alone.
                if let Some(b) = pe.held_by_pod(&r.k8s_pod_namespace, &r.k8s_pod_name) {
                    let holder_uid = b.holder().map(|h| h.uid.clone()).unwrap_or_default();
                    tracing::info!(
                        eni = %b.eni_id,
                        del_uid = %r.k8s_pod_uid,
                        holder_uid = %holder_uid,
                        "branch of a pod of this name belongs to another sandbox, left alone"
                    );
                }
            }
        }
        Ok(released)
    }

    /// Cancels a waiting ADD of the key, then releases under the key's lock.
    async fn release(
        &self,
        key: &Key,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Assignment>, Status> {
        let guard = self.keys.enter_del(key);
        let _held = guard.lock().await;
        let target = self.release_key(key, namespace, name);
        let released = self
            .node
            .datastore()
            .release(&target, SystemTime::now())
            .map_err(persist_failure)?;
        self.node.wake_pool();
        match &released {
            Some(a) => tracing::info!(released = %target, ip = %a.ip, "address released"),
            None => tracing::info!("release of an unknown attachment, nothing to do"),
        }
        Ok(released)
    }

    /// The key to release: the request's own, or an allocation rebuilt from the pod's host
    /// veth when ipamd never learned the container id.
    fn release_key(&self, key: &Key, namespace: &str, name: &str) -> Key {
        let known = self.node.datastore().allocation(key).is_some();
        if known || name.is_empty() {
            return key.clone();
        }
        let hash = names::pod_hash(namespace, name);
        self.node
            .datastore()
            .rebuilt_key_for(&hash)
            .unwrap_or_else(|| key.clone())
    }
}

#[tonic::async_trait]
impl CniBackend for Backend {
    async fn add_network(
        &self,
        request: Request<AddNetworkRequest>,
    ) -> Result<Response<AddNetworkReply>, Status> {
        let r = request.into_inner();
        check_version(&r.client_version)?;
        let key = Key::new(&r.network_name, &r.container_id, &r.if_name);
        let meta = PodMeta {
            namespace: r.k8s_pod_namespace.clone(),
            name: r.k8s_pod_name.clone(),
            interfaces_count: 1,
        };
        let span = tracing::info_span!("add", key = %key, pod_namespace = %meta.namespace, pod = %meta.name);
        self.node.metrics.add_ip_request();
        if let Some(reply) = self.add_branch(&key, &r).instrument(span.clone()).await? {
            return Ok(Response::new(reply));
        }
        match self.assign(&key, meta).instrument(span.clone()).await? {
            Ok(a) => {
                span.in_scope(|| tracing::info!(ip = %a.ip, eni = %a.eni_id, table = a.route_table, "address assigned"));
                Ok(Response::new(self.add_reply(&a)))
            }
            Err(reason) => {
                span.in_scope(|| tracing::warn!(reason = %reason, "add not served"));
                Ok(Response::new(AddNetworkReply {
                    success: false,
                    failure_reason: reason,
                    ..Default::default()
                }))
            }
        }
    }

    async fn del_network(
        &self,
        request: Request<DelNetworkRequest>,
    ) -> Result<Response<DelNetworkReply>, Status> {
        let r = request.into_inner();
        check_version(&r.client_version)?;
        let key = Key::new(&r.network_name, &r.container_id, &r.if_name);
        let span = tracing::info_span!("del", key = %key, pod_namespace = %r.k8s_pod_namespace, pod = %r.k8s_pod_name);
        self.node.metrics.del_ip_request(if r.reason.is_empty() {
            "PodDeleted"
        } else {
            &r.reason
        });
        if let Some(b) = self
            .release_branch(&key, &r)
            .instrument(span.clone())
            .await?
        {
            return Ok(Response::new(DelNetworkReply {
                success: true,
                found: true,
                ip_allocation_metadata: vec![branch_metadata(&b)],
                pod_vlan_id: i32::from(b.vlan_id),
                ..Default::default()
            }));
        }
        let released = self
            .release(&key, &r.k8s_pod_namespace, &r.k8s_pod_name)
            .instrument(span)
            .await?;
        let reply = match released {
            Some(a) => DelNetworkReply {
                success: true,
                found: true,
                ip_allocation_metadata: vec![metadata(&a)],
                ..Default::default()
            },
            None => DelNetworkReply {
                success: true,
                found: false,
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        check_version(&request.get_ref().client_version)?;
        let stats = self.node.stats();
        let available = stats.available();
        let reason = if self.node.is_terminating() {
            "ipamd is shutting down".to_string()
        } else if available == 0 {
            format!("no free address ({stats})")
        } else {
            String::new()
        };
        Ok(Response::new(StatusReply {
            ready: reason.is_empty(),
            reason,
            available_addresses: available as i32,
        }))
    }

    async fn garbage_collect(
        &self,
        request: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectReply>, Status> {
        let r = request.into_inner();
        check_version(&r.client_version)?;
        let valid: HashSet<(String, String)> = r
            .valid_attachments
            .into_iter()
            .map(|a| (a.container_id, a.if_name))
            .collect();
        let now = SystemTime::now();
        let candidates: Vec<Key> = self
            .node
            .datastore()
            .allocations()
            .filter(|(k, a)| {
                k.network_name == r.network_name
                    && !valid.contains(&(k.container_id.clone(), k.if_name.clone()))
                    && now.duration_since(a.assigned_at).unwrap_or_default() >= GC_MIN_AGE
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut released = Vec::new();
        for key in candidates {
            if let Some(entry) = self.collect_one(&key).await? {
                released.push(entry);
            }
        }
        if let Some(pe) = &self.node.pod_eni {
            for key in pe.collectable(&r.network_name, &valid, GC_MIN_AGE, now) {
                if let Some(entry) = self.collect_branch(&key).await? {
                    released.push(entry);
                }
            }
        }
        Ok(Response::new(GarbageCollectReply { released }))
    }
}

impl Backend {
    /// Releases one stale attachment unless an RPC for it is running.
    async fn collect_one(&self, key: &Key) -> Result<Option<ReleasedAttachment>, Status> {
        let guard = self.keys.enter_other(key);
        if guard.others() > 0 {
            return Ok(None);
        }
        let _held = guard.lock().await;
        let meta = self
            .node
            .datastore()
            .allocation(key)
            .map(|a| a.meta.clone());
        let Some(meta) = meta else { return Ok(None) };
        let released = self
            .node
            .datastore()
            .release(key, SystemTime::now())
            .map_err(persist_failure)?;
        self.node.wake_pool();
        Ok(released.map(|a| {
            tracing::info!(key = %key, ip = %a.ip, "garbage-collected attachment");
            ReleasedAttachment {
                container_id: key.container_id.clone(),
                if_name: key.if_name.clone(),
                i_pv4_addr: a.ip.to_string(),
                route_table_id: a.route_table as i32,
                pod_namespace: meta.namespace,
                pod_name: meta.name,
            }
        }))
    }
}

impl Backend {
    /// Releases one stale branch attachment unless an RPC for it is running.
    async fn collect_branch(&self, key: &Key) -> Result<Option<ReleasedAttachment>, Status> {
        let Some(pe) = &self.node.pod_eni else {
            return Ok(None);
        };
        let guard = self.keys.enter_other(key);
        if guard.others() > 0 {
            return Ok(None);
        }
        let _held = guard.lock().await;
        let Some(holder) = pe.held_by_key(key).and_then(|b| b.holder().cloned()) else {
            return Ok(None);
        };
        let released = pe.release(&self.node, key).map_err(persist_failure)?;
        Ok(released.map(|b| {
            tracing::info!(
                key = %key,
                eni = %b.eni_id,
                vlan_id = b.vlan_id,
                "garbage-collected branch attachment"
            );
            ReleasedAttachment {
                container_id: key.container_id.clone(),
                if_name: key.if_name.clone(),
                i_pv4_addr: b.ip.to_string(),
                route_table_id: branch_metadata(&b).route_table_id,
                pod_namespace: holder.namespace,
                pod_name: holder.name,
            }
        }))
    }
}

/// Binds the socket: directory 0700, stale socket removed, socket 0660.
pub fn bind(path: &Path) -> Result<UnixListener, RpcError> {
    let err = |source| RpcError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Serves CNIBackend and grpc.health.v1 until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    node: Arc<Node>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RpcError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<CniBackendServer<Backend>>().await;
    let backend = CniBackendServer::new(Backend::new(node));
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        reporter
            .set_not_serving::<CniBackendServer<Backend>>()
            .await;
    };
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(backend)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await?;
    Ok(())
}
