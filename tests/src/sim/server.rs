//! The running simulator: builds the VPC and its namespaces, serves EC2 (in the root namespace
//! and in every instance), IMDS and the control API, and tears everything down on SIGTERM or
//! SIGINT.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinSet;

use super::control::{Calls, Fault, Faults};
use super::ec2::{api, ids, xml, Ec2Error, Vpc};
use super::fabric::{desired, Fabric, FabricError};
use super::imds;
use super::info::{SimInfo, IMDS_PORT, INSTANCE_EC2_PORT};
use super::netns::{self, NetnsError};
use super::scenario::{Scenario, ScenarioError};
use super::state;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("vpc-sim must run as root (it creates network namespaces)")]
    NotRoot,
    #[error("netns prefix {0:?} must be 1-40 characters of [A-Za-z0-9_.-]")]
    BadPrefix(String),
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("build vpc from scenario: {0}")]
    Model(#[source] Ec2Error),
    #[error("build fabric: {0}")]
    Fabric(#[from] FabricError),
    #[error("listen: {0}")]
    Listen(#[from] NetnsError),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: PathBuf,
    pub run_dir: PathBuf,
    pub netns_prefix: String,
}

/// Everything the HTTP handlers share. The fabric lock serialises EC2 calls so the datapath
/// changes of one call are complete before its answer goes out and before the next call runs.
pub struct Shared {
    pub vpc: Arc<Mutex<Vpc>>,
    fabric: Mutex<Fabric>,
    faults: Mutex<Faults>,
    calls: Mutex<Calls>,
    /// Whether branch ENIs carry traffic (the kernel makes 802.1Q links).
    vlan_datapath: bool,
}

struct Listeners {
    ec2: TcpListener,
    per_instance: Vec<(String, TcpListener, TcpListener)>,
}

pub fn run(opts: Options) -> Result<(), SimError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(SimError::NotRoot);
    }
    check_prefix(&opts.netns_prefix)?;
    let scenario = Scenario::load(&opts.scenario)?;
    let vpc = Vpc::from_scenario(&scenario).map_err(SimError::Model)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SimError::Io("start runtime", e))?;

    // Catch SIGTERM/SIGINT before creating anything, so a signal during setup still ends in
    // a teardown instead of leaving namespaces behind.
    let signals = {
        let _enter = runtime.enter();
        Signals::new()?
    };
    let mut fabric = Fabric::new(&opts.netns_prefix, &vpc, &scenario.outside);
    fabric.build(&vpc)?;
    let listeners = bind_all(&fabric, &vpc)?;
    let ec2_port = listeners
        .ec2
        .local_addr()
        .map_err(|e| SimError::Io("ec2 address", e))?
        .port();
    let info = SimInfo::new(&vpc, &fabric, ec2_port)?;
    let shared = Arc::new(Shared {
        vlan_datapath: fabric.vlan_datapath(),
        vpc: Arc::new(Mutex::new(vpc)),
        fabric: Mutex::new(fabric),
        faults: Mutex::new(Faults::default()),
        calls: Mutex::new(Calls::default()),
    });

    let served = runtime.block_on(serve(shared.clone(), listeners, &info, &opts, signals));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    shared
        .fabric
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .teardown();
    let _ = std::fs::remove_file(SimInfo::path(&opts.run_dir));
    tracing::info!("vpc-sim stopped");
    served
}

fn check_prefix(prefix: &str) -> Result<(), SimError> {
    let ok = (1..=40).contains(&prefix.len())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SimError::BadPrefix(prefix.to_string()))
    }
}

fn bind_all(fabric: &Fabric, vpc: &Vpc) -> Result<Listeners, SimError> {
    let ec2 = TcpListener::bind("127.0.0.1:0").map_err(|e| SimError::Io("bind ec2", e))?;
    ec2.set_nonblocking(true)
        .map_err(|e| SimError::Io("bind ec2", e))?;
    let mut per_instance = Vec::new();
    for id in vpc.instances.keys() {
        let ns = fabric.instance_netns(id)?;
        let ec2 = netns::bind(ns, SocketAddr::from(([127, 0, 0, 1], INSTANCE_EC2_PORT)))?;
        let imds = netns::bind(ns, SocketAddr::from(([127, 0, 0, 1], IMDS_PORT)))?;
        per_instance.push((id.clone(), ec2, imds));
    }
    Ok(Listeners { ec2, per_instance })
}

async fn serve(
    shared: Arc<Shared>,
    listeners: Listeners,
    info: &SimInfo,
    opts: &Options,
    mut signals: Signals,
) -> Result<(), SimError> {
    let mut servers = JoinSet::new();
    let control = ec2_router(shared.clone()).merge(control_router(shared.clone()));
    spawn_server(&mut servers, listeners.ec2, control)?;
    for (id, ec2, imds) in listeners.per_instance {
        spawn_server(&mut servers, ec2, ec2_router(shared.clone()))?;
        spawn_server(&mut servers, imds, imds::router(shared.vpc.clone(), id))?;
    }

    info.write(&opts.run_dir)
        .map_err(|e| SimError::Io("write sim.json", e))?;
    let line = serde_json::to_string(info).expect("sim info serializes");
    println!("{line}");
    tracing::info!(ec2 = %info.ec2_endpoint, fabric = %info.fabric_netns, "vpc-sim ready");

    signals.wait().await;
    tracing::info!("vpc-sim stopping");
    servers.abort_all();
    while servers.join_next().await.is_some() {}
    Ok(())
}

fn spawn_server(
    servers: &mut JoinSet<()>,
    listener: TcpListener,
    router: Router,
) -> Result<(), SimError> {
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| SimError::Io("listen", e))?;
    servers.spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(())
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Self, SimError> {
        let install = |kind| signal(kind).map_err(|e| SimError::Io("install signal handler", e));
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn ec2_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(ec2_call).post(ec2_call))
        .with_state(shared)
}

fn control_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/sim/calls", get(get_calls))
        .route("/sim/calls/reset", post(reset_calls))
        .route(
            "/sim/faults",
            get(get_faults).post(add_fault).delete(clear_faults),
        )
        .route("/sim/faults/reset", post(clear_faults))
        .route("/sim/state", get(get_state))
        .with_state(shared)
}

async fn ec2_call(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let request_id = ids::request_id();
    let params = api_params(query.as_deref(), &body);
    let action = params.get("Action").unwrap_or("").to_string();
    let result = handle_call(shared, &headers, params, request_id.clone()).await;
    let (status, text) = match result {
        Ok(xml) => {
            tracing::debug!(%action, %request_id, "ec2 call");
            (StatusCode::OK, xml)
        }
        Err(e) => {
            tracing::info!(%action, %request_id, code = %e.code, message = %e.message, "ec2 call failed");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            (
                status,
                xml::error_document(&e.code, &e.message, &request_id),
            )
        }
    };
    let headers = [
        ("content-type", "text/xml;charset=UTF-8".to_string()),
        ("x-amzn-requestid", request_id),
    ];
    (status, headers, text).into_response()
}

fn api_params(query: Option<&str>, body: &[u8]) -> super::ec2::query::Params {
    super::ec2::query::Params::parse(&[query.unwrap_or("").as_bytes(), body])
}

async fn handle_call(
    shared: Arc<Shared>,
    headers: &HeaderMap,
    params: super::ec2::query::Params,
    request_id: String,
) -> Result<String, Ec2Error> {
    check_signed(headers, &params)?;
    let action = params.action()?.to_string();
    shared.calls.lock().expect("calls lock").record(&action);
    let hit = shared.faults.lock().expect("faults lock").take(&action);
    if let Some(hit) = hit {
        tokio::time::sleep(hit.delay).await;
        if let Some(error) = hit.error {
            return Err(error);
        }
    }
    tokio::task::spawn_blocking(move || shared.execute(&params, &request_id))
        .await
        .map_err(|e| Ec2Error::internal(format!("request task failed: {e}")))?
}

/// EC2 rejects unsigned requests; the simulator checks that a SigV4 signature is present
/// (header or query form) but not what it signs.
fn check_signed(headers: &HeaderMap, params: &super::ec2::query::Params) -> Result<(), Ec2Error> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 "));
    if header || params.get("X-Amz-Signature").is_some() {
        return Ok(());
    }
    Err(Ec2Error::new(
        "AuthFailure",
        "the request carries no AWS signature version 4",
    ))
}

impl Shared {
    fn execute(
        &self,
        params: &super::ec2::query::Params,
        request_id: &str,
    ) -> Result<String, Ec2Error> {
        let mut fabric = self.fabric.lock().expect("fabric lock");
        let (reply, datapath) = {
            let mut vpc = self.vpc.lock().expect("vpc lock");
            let reply = api::dispatch(&mut vpc, params, request_id)?;
            let datapath = reply.changed.then(|| desired(&vpc));
            (reply, datapath)
        };
        if let Some(datapath) = datapath {
            fabric.sync(datapath).map_err(|e| {
                tracing::error!(error = %e, "datapath update failed");
                Ec2Error::internal(format!("datapath update failed: {e}"))
            })?;
        }
        Ok(reply.xml)
    }
}

async fn get_calls(State(shared): State<Arc<Shared>>) -> Json<BTreeMap<String, u64>> {
    Json(shared.calls.lock().expect("calls lock").snapshot())
}

async fn reset_calls(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.calls.lock().expect("calls lock").reset();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Json<Vec<Fault>> {
    Json(
        shared
            .faults
            .lock()
            .expect("faults lock")
            .pending()
            .to_vec(),
    )
}

async fn add_fault(State(shared): State<Arc<Shared>>, Json(fault): Json<Fault>) -> Response {
    match shared.faults.lock().expect("faults lock").add(fault) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.faults.lock().expect("faults lock").clear();
    StatusCode::NO_CONTENT
}

async fn get_state(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let vpc = shared.vpc.lock().expect("vpc lock");
    Json(state::to_json(&vpc, shared.vlan_datapath))
}
