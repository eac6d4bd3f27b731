//! A scripted CNIBackend on a real unix socket, standing in for ipamd (which needs a whole
//! VPC). It hands out addresses from a small pool, keys them as the contract says, and
//! records every call so tests can assert what the plugin asked.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use vpc_cni_proto::cni_backend_server::{CniBackend, CniBackendServer};
use vpc_cni_proto::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alloc {
    pub ip: Ipv4Addr,
    pub pod_namespace: String,
    pub pod_name: String,
    pub infra_id: String,
}

/// One recorded call: the RPC name and its request, flattened for assertions.
#[derive(Debug, Clone)]
pub enum Call {
    Add(AddNetworkRequest),
    Del(DelNetworkRequest),
    Status,
    Gc(GarbageCollectRequest),
}

type Key = (String, String, String);

/// What a branch-ENI answer carries besides the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchAnswer {
    pub vlan: i32,
    pub eni_mac: String,
    /// PodENISubnetGW; empty leaves the plugin to derive it from `subnet`.
    pub gateway: String,
    pub parent_index: i32,
    pub subnet: String,
}

pub struct State {
    pub pool: Vec<Ipv4Addr>,
    pub allocations: HashMap<Key, Alloc>,
    pub calls: Vec<Call>,
    pub ready: bool,
    pub device: i32,
    pub table: i32,
    pub expect_version: String,
    pub on_add: Option<Box<dyn Fn() + Send>>,
    /// When set, AddNetwork answers as for a pod with a branch ENI.
    pub branch: Option<BranchAnswer>,
}

#[derive(Clone)]
struct Backend(Arc<Mutex<State>>);

pub struct TestIpamd {
    pub socket: PathBuf,
    pub state: Arc<Mutex<State>>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    _dir: tempfile::TempDir,
}

impl TestIpamd {
    /// A backend with `pool` free addresses on ENI device 2 (route table 3).
    pub fn start(pool: &[&str]) -> TestIpamd {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(Mutex::new(State {
            pool: pool.iter().rev().map(|s| s.parse().unwrap()).collect(),
            allocations: HashMap::new(),
            calls: Vec::new(),
            ready: true,
            device: 2,
            table: 3,
            expect_version: CONTRACT_VERSION.to_string(),
            on_add: None,
            branch: None,
        }));
        let mut me = TestIpamd {
            socket: dir.path().join("ipamd.sock"),
            state,
            running: None,
            _dir: dir,
        };
        me.resume();
        me
    }

    /// Stops serving and removes the socket, as a daemon that went away.
    pub fn stop(&mut self) {
        if let Some((tx, thread)) = self.running.take() {
            let _ = tx.send(());
            thread.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Serves again on the same socket, with the state it had.
    pub fn resume(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let (tx, rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let backend = Backend(self.state.clone());
        let socket = self.socket.clone();
        let thread = std::thread::spawn(move || serve(backend, &socket, rx, ready_tx));
        ready_rx.recv().expect("test ipamd did not start");
        self.running = Some((tx, thread));
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn adds(&self) -> Vec<AddNetworkRequest> {
        self.with(|s| {
            s.calls
                .iter()
                .filter_map(|c| match c {
                    Call::Add(r) => Some(r.clone()),
                    _ => None,
                })
                .collect()
        })
    }

    pub fn dels(&self) -> Vec<DelNetworkRequest> {
        self.with(|s| {
            s.calls
                .iter()
                .filter_map(|c| match c {
                    Call::Del(r) => Some(r.clone()),
                    _ => None,
                })
                .collect()
        })
    }

    pub fn allocated(&self) -> usize {
        self.with(|s| s.allocations.len())
    }
}

impl Drop for TestIpamd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    backend: Backend,
    socket: &Path,
    stop: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(socket).expect("bind test ipamd socket");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        ready.send(()).unwrap();
        tonic::transport::Server::builder()
            .add_service(CniBackendServer::new(backend))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await
            .expect("test ipamd serve");
    });
}

/// As ipamd answers for a branch ENI: the address is the branch's, on no device of the node.
fn branch_reply(ip: Ipv4Addr, b: BranchAnswer) -> AddNetworkReply {
    AddNetworkReply {
        success: true,
        ip_allocation_metadata: vec![IpAllocationMetadata {
            i_pv4_addr: ip.to_string(),
            device_number: -1,
            route_table_id: 0,
            ..Default::default()
        }],
        vp_cv4_cid_rs: vec!["10.0.0.0/16".into()],
        pod_vlan_id: b.vlan,
        pod_enimac: b.eni_mac,
        pod_eni_subnet_gw: b.gateway,
        parent_if_index: b.parent_index,
        eniid: "eni-0branch".into(),
        subnet_cidr: b.subnet,
        ..Default::default()
    }
}

impl Backend {
    fn version(&self, got: &str) -> Result<(), Status> {
        let want = self.0.lock().unwrap().expect_version.clone();
        if got != want {
            return Err(Status::failed_precondition(format!(
                "client version {got}, ipamd {want}"
            )));
        }
        Ok(())
    }

    fn meta(&self, ip: Ipv4Addr) -> IpAllocationMetadata {
        let s = self.0.lock().unwrap();
        IpAllocationMetadata {
            i_pv4_addr: ip.to_string(),
            device_number: s.device,
            route_table_id: s.table,
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl CniBackend for Backend {
    async fn add_network(
        &self,
        req: Request<AddNetworkRequest>,
    ) -> Result<Response<AddNetworkReply>, Status> {
        let req = req.into_inner();
        self.version(&req.client_version)?;
        let hook = {
            let mut s = self.0.lock().unwrap();
            s.calls.push(Call::Add(req.clone()));
            s.on_add.take()
        };
        if let Some(hook) = hook {
            hook();
        }
        let key = (
            req.network_name.clone(),
            req.container_id.clone(),
            req.if_name.clone(),
        );
        let ip = {
            let mut s = self.0.lock().unwrap();
            match s.allocations.get(&key) {
                Some(a) => Some(a.ip),
                None => s.pool.pop().inspect(|ip| {
                    let alloc = Alloc {
                        ip: *ip,
                        pod_namespace: req.k8s_pod_namespace.clone(),
                        pod_name: req.k8s_pod_name.clone(),
                        infra_id: req.k8s_pod_infra_container_id.clone(),
                    };
                    s.allocations.insert(key, alloc);
                }),
            }
        };
        let Some(ip) = ip else {
            return Ok(Response::new(AddNetworkReply {
                success: false,
                failure_reason: "pool empty".into(),
                ..Default::default()
            }));
        };
        let branch = self.0.lock().unwrap().branch.clone();
        Ok(Response::new(match branch {
            None => AddNetworkReply {
                success: true,
                ip_allocation_metadata: vec![self.meta(ip)],
                vp_cv4_cid_rs: vec!["10.0.0.0/16".into()],
                eniid: "eni-0test".into(),
                subnet_cidr: "10.0.0.0/24".into(),
                ..Default::default()
            },
            Some(b) => branch_reply(ip, b),
        }))
    }

    async fn del_network(
        &self,
        req: Request<DelNetworkRequest>,
    ) -> Result<Response<DelNetworkReply>, Status> {
        let req = req.into_inner();
        self.version(&req.client_version)?;
        let key = (
            req.network_name.clone(),
            req.container_id.clone(),
            req.if_name.clone(),
        );
        let released = {
            let mut s = self.0.lock().unwrap();
            s.calls.push(Call::Del(req));
            let released = s.allocations.remove(&key);
            // No cooldown here: a released address is free again at once.
            if let Some(a) = &released {
                s.pool.push(a.ip);
            }
            released
        };
        let metadata = released.iter().map(|a| self.meta(a.ip)).collect();
        Ok(Response::new(DelNetworkReply {
            success: true,
            found: released.is_some(),
            ip_allocation_metadata: metadata,
            ..Default::default()
        }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.version(&req.get_ref().client_version)?;
        let mut s = self.0.lock().unwrap();
        s.calls.push(Call::Status);
        let ready = s.ready && !s.pool.is_empty();
        let reason = if ready {
            String::new()
        } else {
            "no free address out of cooldown".into()
        };
        Ok(Response::new(StatusReply {
            ready,
            reason,
            available_addresses: s.pool.len() as i32,
        }))
    }

    async fn garbage_collect(
        &self,
        req: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectReply>, Status> {
        let req = req.into_inner();
        self.version(&req.client_version)?;
        let mut s = self.0.lock().unwrap();
        s.calls.push(Call::Gc(req.clone()));
        let valid: Vec<(String, String)> = req
            .valid_attachments
            .iter()
            .map(|a| (a.container_id.clone(), a.if_name.clone()))
            .collect();
        let stale: Vec<Key> = s
            .allocations
            .keys()
            .filter(|(net, cid, ifname)| {
                *net == req.network_name && !valid.contains(&(cid.clone(), ifname.clone()))
            })
            .cloned()
            .collect();
        let table = s.table;
        let released = stale
            .into_iter()
            .map(|key| {
                let a = s.allocations.remove(&key).unwrap();
                s.pool.push(a.ip);
                ReleasedAttachment {
                    container_id: key.1,
                    if_name: key.2,
                    i_pv4_addr: a.ip.to_string(),
                    route_table_id: table,
                    pod_namespace: a.pod_namespace,
                    pod_name: a.pod_name,
                }
            })
            .collect();
        Ok(Response::new(GarbageCollectReply { released }))
    }
}
