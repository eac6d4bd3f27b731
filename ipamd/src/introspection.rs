//! HTTP endpoints on loopback: introspection (`/v1/enis`, `/v1/ipamd-env-settings`) shaped
//! like aws-node's, and Prometheus `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use thiserror::Error;
use tokio::sync::watch;

use crate::datastore::{addresses, Datastore, Eni};
use crate::node::Node;
use crate::sgp::pool::{Branch, BranchState};
use crate::sgp::trunk::Trunk;

/// Go's zero time, which aws-node prints for "never".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serve on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub fn introspection_router(node: Arc<Node>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                Json(json!([
                    "/v1/enis",
                    "/v1/branches",
                    "/v1/ipamd-env-settings"
                ]))
            }),
        )
        .route("/v1/enis", get(enis))
        .route("/v1/branches", get(branches))
        .route("/v1/ipamd-env-settings", get(env_settings))
        .with_state(node)
}

pub fn metrics_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn enis(State(node): State<Arc<Node>>) -> Json<Value> {
    let mut value = {
        let ds = node.datastore();
        enis_json(&ds, SystemTime::now())
    };
    if let Some(trunk) = node.pod_eni.as_ref().and_then(|pe| pe.trunk()) {
        value["0"]["ENIs"][&trunk.eni_id] = trunk_json(&trunk);
    }
    Json(value)
}

/// The trunk as aws-node lists it: an ENI with IsTrunk and no addresses to hand out.
fn trunk_json(trunk: &Trunk) -> Value {
    json!({
        "ID": trunk.eni_id,
        "IsPrimary": false,
        "IsTrunk": true,
        "IsEFA": false,
        "DeviceNumber": trunk.device_index,
        "RouteTableID": trunk.device_index + 1,
        "Deleting": false,
        "AvailableIPv4Cidrs": {},
        "IPv6Cidrs": {},
    })
}

/// Security groups for pods: the trunk, the limits and every branch with what it is doing.
async fn branches(State(node): State<Arc<Node>>) -> Json<Value> {
    let Some(pe) = &node.pod_eni else {
        return Json(json!({ "enabled": false }));
    };
    let pool = pe.pool();
    let counts = pool.counts();
    let branches: Vec<Value> = pool.branches().map(branch_json).collect();
    Json(json!({
        "enabled": true,
        "enforcingMode": crate::config::mode_name(pe.enforcing_mode),
        "instanceType": pe.instance_type,
        "branchLimit": pe.limit.count(),
        "warmTarget": pe.warm_target,
        "cooldownSeconds": pe.cooldown.as_secs(),
        "trunk": pe.trunk().map(|t| trunk_json(&t)),
        "trunkSlotReserved": node.trunk_slot_taken(),
        "addressPoolMaxEnis": node.max_enis(),
        "warm": counts.warm,
        "cooling": counts.cooling,
        "inUse": counts.in_use,
        "vlanIds": pool.vlans_in_use(),
        "branches": branches,
    }))
}

fn branch_json(b: &Branch) -> Value {
    let mut value = json!({
        "eniId": b.eni_id,
        "vlanId": b.vlan_id,
        "mac": b.mac,
        "ipv4": b.ip.to_string(),
        "subnetCidr": b.subnet.to_string(),
        "associationId": b.association_id,
        "securityGroups": b.groups.ids().collect::<Vec<_>>(),
        "state": b.state.name(),
    });
    match &b.state {
        BranchState::Held(h) => {
            value["pod"] = json!({
                "namespace": h.namespace,
                "name": h.name,
                "uid": h.uid,
                "assignedTime": rfc3339(h.since),
            });
        }
        BranchState::Cooling(since) => value["releasedTime"] = json!(rfc3339(*since)),
        BranchState::Warm | BranchState::Busy => {}
    }
    value
}

async fn env_settings(State(node): State<Arc<Node>>) -> Json<BTreeMap<&'static str, String>> {
    Json(node.config.as_env_map())
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let text = node.metrics.render(&node.gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Per network card (only card 0 here): totals and every ENI with its CIDRs and the
/// addresses in use or cooling down. Container ids are left out, as aws-node does.
pub fn enis_json(ds: &Datastore, now: SystemTime) -> Value {
    let stats = ds.stats(now);
    let enis: Map<String, Value> = ds
        .enis()
        .map(|eni| (eni.info.id.clone(), eni_json(ds, eni, now)))
        .collect();
    json!({ "0": { "TotalIPs": stats.total, "AssignedIPs": stats.assigned, "ENIs": enis } })
}

fn eni_json(ds: &Datastore, eni: &Eni, now: SystemTime) -> Value {
    let cidrs: Map<String, Value> = eni
        .cidrs
        .iter()
        .map(|(net, cidr)| {
            let used: Map<String, Value> = addresses(net)
                .filter_map(|ip| address_json(ds, ip, now).map(|v| (ip.to_string(), v)))
                .collect();
            let value = json!({
                "Cidr": net.to_string(),
                "IPAddresses": used,
                "IsPrefix": cidr.prefix,
                "AddressFamily": "4",
                "Releasing": cidr.releasing,
            });
            (net.to_string(), value)
        })
        .collect();
    json!({
        "ID": eni.info.id,
        "createTime": rfc3339(eni.added),
        "IsPrimary": eni.info.primary,
        "IsTrunk": false,
        "IsEFA": false,
        "DeviceNumber": eni.info.device_index,
        "RouteTableID": eni.info.route_table(),
        "Deleting": eni.deleting,
        "AvailableIPv4Cidrs": cidrs,
        "IPv6Cidrs": {},
    })
}

fn address_json(ds: &Datastore, ip: std::net::Ipv4Addr, now: SystemTime) -> Option<Value> {
    let assigned = ds.allocations().find(|(_, a)| a.ip == ip);
    if let Some((key, alloc)) = assigned {
        return Some(json!({
            "Address": ip.to_string(),
            "IPAMKey": { "networkName": key.network_name, "containerID": "", "ifName": "" },
            "IPAMMetadata": { "k8sPodNamespace": alloc.meta.namespace, "k8sPodName": alloc.meta.name },
            "AssignedTime": rfc3339(alloc.assigned_at),
            "UnassignedTime": ZERO_TIME,
        }));
    }
    let released = ds.cooling_since(ip, now)?;
    Some(json!({
        "Address": ip.to_string(),
        "IPAMKey": { "networkName": "", "containerID": "", "ifName": "" },
        "IPAMMetadata": {},
        "AssignedTime": ZERO_TIME,
        "UnassignedTime": rfc3339(released),
    }))
}

fn rfc3339(t: SystemTime) -> String {
    let t: chrono::DateTime<chrono::Utc> = t.into();
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Serves `router` on `addr` until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    tracing::info!(%addr, "http listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .map_err(|source| HttpError::Serve { addr, source })
}
