//! ADD: allocate through ipamd, wire the pod, report the result.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use vpc_cni_proto::{AddNetworkReply, AddNetworkRequest, DelNetworkRequest};

use super::{ipamd_err, netlink_err, Error, Output};
use crate::cni::result::{CniResult, Interface, IpConfig};
use crate::cni::{CniEnv, NetConf, PodArgs};
use crate::ipamd::IpamdClient;
use crate::names::{host_veth_name, pod_identity, record_name};
use crate::netlink::{Netlink, Netns};
use crate::plumbing::{setup_pod, PodNetwork, Wired};

/// Reason ipamd logs for a release caused by a failed ADD.
const SETUP_FAILED: &str = "SetupNSFailed";

/// What ipamd handed out, checked before anything touches the kernel.
struct Allocation {
    ip: Ipv4Addr,
    device: i32,
    table: u32,
}

/// The pod's namespace and netlink connections on both sides, opened before anything is
/// allocated so that a bad CNI_NETNS or a taken CNI_IFNAME costs no address.
struct Sides {
    pod_netns: Arc<Netns>,
    pod: Netlink,
    host: Netlink,
}

pub(super) async fn add(env: &CniEnv, conf: &NetConf) -> Result<Output, Error> {
    let args = PodArgs::parse(&env.args)?;
    let sides = open_sides(env).await?;
    let context = format!("add pod {}", env.ifname);
    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(ipamd_err(&context))?;
    let reply = ipamd
        .add_network(add_request(env, conf, &args))
        .await
        .map_err(ipamd_err(&context))?;
    let alloc = match accept(env, &reply) {
        Ok(alloc) => alloc,
        Err(err) => return Err(release_after(&mut ipamd, env, conf, &args, err).await),
    };
    tracing::info!(ip = %alloc.ip, table = alloc.table, eni = %reply.eniid, "address assigned");

    let (namespace, name) = identity(env, &args);
    let net = PodNetwork {
        host_veth: host_veth_name(&conf.veth_prefix, namespace, name),
        ifname: env.ifname.clone(),
        ip: alloc.ip,
        table: alloc.table,
        mtu: conf.mtu,
    };
    let wired = match setup_pod(&sides.host, &sides.pod, &sides.pod_netns, &net).await {
        Ok(wired) => wired,
        Err(source) => {
            let err = Error::Setup {
                ifname: env.ifname.clone(),
                source,
            };
            return Err(release_after(&mut ipamd, env, conf, &args, err).await);
        }
    };
    tracing::info!(host_veth = %net.host_veth, ip = %net.ip, "pod wired");
    let ours = result(
        env,
        &net,
        wired,
        alloc.device,
        &record_name(namespace, name),
    );
    Ok(Output::Result(merged(conf, ours).encode(conf.cni_version)))
}

async fn open_sides(env: &CniEnv) -> Result<Sides, Error> {
    let netns_path = env.netns.clone().expect("validated: ADD has CNI_NETNS");
    let pod_netns = Arc::new(open_pod_netns(&netns_path)?);
    let pod = Netlink::in_netns(pod_netns.clone()).map_err(netlink_err("open pod netlink"))?;
    // The spec requires an error when the interface exists; find out before allocating.
    if pod
        .link_by_name(&env.ifname)
        .await
        .map_err(netlink_err("read pod links"))?
        .is_some()
    {
        return Err(Error::IfnameTaken {
            ifname: env.ifname.clone(),
            netns: netns_path,
        });
    }
    let host = Netlink::current().map_err(netlink_err("open host netlink"))?;
    Ok(Sides {
        pod_netns,
        pod,
        host,
    })
}

fn open_pod_netns(path: &std::path::Path) -> Result<Netns, Error> {
    let netns = Netns::open(path).map_err(Error::Netns)?;
    let own = Netns::current().map_err(Error::Netns)?;
    // Wiring our own namespace as a pod would move node routes into a "pod".
    if netns.same_as(&own).map_err(Error::Netns)? {
        return Err(Error::OwnNetns(path.to_path_buf()));
    }
    Ok(netns)
}

pub(super) fn identity<'a>(env: &'a CniEnv, args: &'a PodArgs) -> (&'a str, &'a str) {
    pod_identity(
        &args.pod_namespace,
        &args.pod_name,
        &env.container_id,
        &env.ifname,
    )
}

fn add_request(env: &CniEnv, conf: &NetConf, args: &PodArgs) -> AddNetworkRequest {
    AddNetworkRequest {
        k8s_pod_name: args.pod_name.clone(),
        k8s_pod_namespace: args.pod_namespace.clone(),
        k8s_pod_infra_container_id: args.infra_container_id(&env.container_id).to_string(),
        k8s_pod_uid: args.pod_uid.clone(),
        netns: env
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        if_name: env.ifname.clone(),
        network_name: conf.name.clone(),
        container_id: env.container_id.clone(),
        ..Default::default()
    }
}

/// Turns ipamd's reply into an allocation, or the error to report after releasing it.
fn accept(env: &CniEnv, reply: &AddNetworkReply) -> Result<Allocation, Error> {
    let ifname = env.ifname.clone();
    if !reply.success {
        let reason = if reply.failure_reason.is_empty() {
            "no reason given".to_string()
        } else {
            reply.failure_reason.clone()
        };
        return Err(Error::NoAddress { ifname, reason });
    }
    if reply.pod_vlan_id != 0 {
        // TODO: branch-ENI (security groups for pods) wiring: VLAN link on the trunk,
        // table 100+VLAN and iif rules. DEL already tears such pods down.
        let reason = format!(
            "branch ENI pods (vlan {}) are not supported yet",
            reply.pod_vlan_id
        );
        return Err(Error::Unsupported { ifname, reason });
    }
    let bad = |reason: String| Error::BadReply {
        ifname: env.ifname.clone(),
        reason,
    };
    let meta = reply
        .ip_allocation_metadata
        .first()
        .ok_or_else(|| bad("no address in reply".into()))?;
    let ip: Ipv4Addr = meta
        .i_pv4_addr
        .parse()
        .map_err(|_| bad(format!("IPv4Addr {:?} is not an address", meta.i_pv4_addr)))?;
    let table = u32::try_from(meta.route_table_id)
        .ok()
        .filter(|t| *t > 0 && *t != 255)
        .ok_or_else(|| bad(format!("route table {} is not usable", meta.route_table_id)))?;
    Ok(Allocation {
        ip,
        device: meta.device_number,
        table,
    })
}

/// Gives the address back after a failed ADD (the runtime sends no DEL for a failed ADD),
/// then returns the original error.
async fn release_after(
    ipamd: &mut IpamdClient,
    env: &CniEnv,
    conf: &NetConf,
    args: &PodArgs,
    err: Error,
) -> Error {
    if matches!(err, Error::NoAddress { .. }) {
        return err;
    }
    let req = DelNetworkRequest {
        k8s_pod_name: args.pod_name.clone(),
        k8s_pod_namespace: args.pod_namespace.clone(),
        k8s_pod_infra_container_id: args.infra_container_id(&env.container_id).to_string(),
        k8s_pod_uid: args.pod_uid.clone(),
        reason: SETUP_FAILED.into(),
        if_name: env.ifname.clone(),
        network_name: conf.name.clone(),
        container_id: env.container_id.clone(),
        ..Default::default()
    };
    match ipamd.del_network(req).await {
        Ok(_) => tracing::info!("address released after failed setup"),
        Err(release) => {
            tracing::warn!(error = %release, "cannot release address after failed setup")
        }
    }
    err
}

/// The result in the layout aws-node uses, with real MACs: host veth, container interface,
/// then a record whose sandbox holds the ENI device number (mac "0": not a branch pod).
fn result(env: &CniEnv, net: &PodNetwork, wired: Wired, device: i32, record: &str) -> CniResult {
    let sandbox = env
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    CniResult {
        interfaces: vec![
            Interface {
                name: net.host_veth.clone(),
                mac: wired.host_mac.to_string(),
                ..Default::default()
            },
            Interface {
                name: net.ifname.clone(),
                mac: wired.pod_mac.to_string(),
                mtu: Some(net.mtu),
                sandbox,
                ..Default::default()
            },
            Interface {
                name: record.to_string(),
                mac: "0".into(),
                sandbox: device.to_string(),
                ..Default::default()
            },
        ],
        ips: vec![IpConfig {
            address: IpNet::V4(Ipv4Net::from(net.ip)),
            gateway: None,
            interface: Some(1),
        }],
        ..Default::default()
    }
}

/// A chained ADD must pass on what earlier plugins reported.
fn merged(conf: &NetConf, ours: CniResult) -> CniResult {
    match &conf.prev_result {
        Some(prev) => {
            let mut all = prev.clone();
            all.append(ours);
            all
        }
        None => ours,
    }
}
