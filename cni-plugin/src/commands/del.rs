//! DEL: release the address and remove what ADD made. Never makes things worse: anything
//! already gone is success, ipamd being away is not a reason to fail, and every step runs
//! even when an earlier one failed.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::IpNet;
use vpc_cni_proto::{DelNetworkReply, DelNetworkRequest};

use super::add::identity;
use super::{netlink_err, Error, Output, Recorded};
use crate::cni::{CniEnv, NetConf, PodArgs};
use crate::ipamd::IpamdClient;
use crate::names::{host_veth_name, BRANCH_VETH_PREFIX};
use crate::netlink::{Netlink, Netns};
use crate::plumbing::branch::vlan_id;
use crate::plumbing::{delete_pod_link, teardown_host, HostTeardown, PlumbingError, PodAddress};

const POD_DELETED: &str = "PodDeleted";

pub(super) async fn del(env: &CniEnv, conf: &NetConf) -> Result<Output, Error> {
    let (args, problems) = PodArgs::parse_lenient(&env.args);
    for problem in problems {
        tracing::warn!(%problem, "ignoring malformed CNI_ARGS pair on DEL");
    }
    let recorded = conf
        .prev_result
        .as_ref()
        .and_then(|r| Recorded::find(r, &env.ifname));
    if let Some(error) = recorded.as_ref().and_then(|r| r.vlan_error.as_ref()) {
        tracing::warn!(%error, "prevResult record unreadable, asking ipamd");
    }
    let host = Netlink::current().map_err(netlink_err("open host netlink"))?;

    let (mut pod_addresses, refused) = release_or_recall(env, conf, &args, recorded.as_ref()).await;
    let mut errors = Vec::new();
    let pod_ips = clean_pod_side(env, &mut errors).await;
    if pod_addresses.is_empty() {
        pod_addresses = addresses(&pod_ips, None);
    }
    let branch = pod_addresses.iter().any(|a| a.vlan.is_some());
    let plan = HostTeardown {
        host_veths: host_veth_candidates(env, conf, &args, recorded.as_ref(), branch),
        addresses: pod_addresses,
    };
    if let Err(e) = teardown_host(&host, &plan).await {
        errors.push(e);
    }
    tracing::info!(addresses = ?plan.addresses, host_veths = ?plan.host_veths, "pod torn down");
    finish(env, errors, refused)
}

/// The addresses to clean up and, when ipamd refused the release, why. A branch-ENI pod's
/// prevResult has all the host teardown needs, so its DEL never depends on ipamd: ipamd is
/// told (so the branch goes back to its warm pool) but its absence or refusal changes
/// nothing. Otherwise ipamd's answer wins and prevResult stands in when ipamd is away or
/// knows nothing.
async fn release_or_recall(
    env: &CniEnv,
    conf: &NetConf,
    args: &PodArgs,
    recorded: Option<&Recorded>,
) -> (Vec<PodAddress>, Option<String>) {
    if let Some((rec, vlan)) = recorded.and_then(|r| Some((r, r.vlan?))) {
        match release(env, conf, args).await {
            Ok(reply) if reply.success => {}
            Ok(_) => tracing::warn!(
                vlan,
                "ipamd did not take the branch back; it reclaims it later"
            ),
            Err(err) => {
                tracing::warn!(vlan, error = %err, "ipamd unavailable; it reclaims the branch later")
            }
        }
        return (addresses(&rec.ips, Some(vlan)), None);
    }
    let mut refused = None;
    let mut found = Vec::new();
    // ipamd answered that this attachment holds nothing: an address in prevResult is then
    // either already cleaned up or now someone else's, and is not torn down on its word.
    let mut ipamd_knows_none = false;
    match release(env, conf, args).await {
        Ok(reply) => {
            found = from_reply(&reply);
            ipamd_knows_none = reply.success && !reply.found;
            if !reply.success {
                refused = Some("ipamd answered Success=false".to_string());
            }
        }
        Err(err) => tracing::warn!(error = %err, "ipamd unavailable, cleaning up from prevResult"),
    }
    if found.is_empty() && !ipamd_knows_none {
        found = addresses(recorded.map_or(&[][..], |r| &r.ips), None);
    }
    (found, refused)
}

/// The host veth may be named after the pod (the configured prefix, or "vlan" for a
/// branch-ENI pod in strict mode) or be listed in prevResult; every candidate is tried, a
/// missing one is no error.
fn host_veth_candidates(
    env: &CniEnv,
    conf: &NetConf,
    args: &PodArgs,
    recorded: Option<&Recorded>,
    branch: bool,
) -> Vec<String> {
    let (namespace, name) = identity(env, args);
    let mut names = vec![host_veth_name(&conf.veth_prefix, namespace, name)];
    if branch {
        names.push(host_veth_name(BRANCH_VETH_PREFIX, namespace, name));
    }
    if let Some(host) = recorded.and_then(|r| r.host_veth.as_ref()) {
        names.push(host.name.clone());
    }
    names.dedup();
    names.retain(|n| !n.is_empty());
    names
}

async fn release(
    env: &CniEnv,
    conf: &NetConf,
    args: &PodArgs,
) -> Result<DelNetworkReply, crate::ipamd::IpamdError> {
    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket).await?;
    let req = DelNetworkRequest {
        k8s_pod_name: args.pod_name.clone(),
        k8s_pod_namespace: args.pod_namespace.clone(),
        k8s_pod_infra_container_id: args.infra_container_id(&env.container_id).to_string(),
        k8s_pod_uid: args.pod_uid.clone(),
        reason: POD_DELETED.into(),
        if_name: env.ifname.clone(),
        network_name: conf.name.clone(),
        container_id: env.container_id.clone(),
        ..Default::default()
    };
    let reply = ipamd.del_network(req).await?;
    if reply.found {
        tracing::info!(
            addresses = reply.ip_allocation_metadata.len(),
            "address released"
        );
    } else {
        tracing::info!("ipamd had no allocation for this attachment");
    }
    Ok(reply)
}

fn from_reply(reply: &DelNetworkReply) -> Vec<PodAddress> {
    let vlan = match reply.pod_vlan_id {
        0 => None,
        raw => vlan_id(i64::from(raw))
            .inspect_err(|e| tracing::warn!(error = %e, "ipamd named an unusable vlan"))
            .ok(),
    };
    reply
        .ip_allocation_metadata
        .iter()
        .filter_map(|m| m.i_pv4_addr.parse::<Ipv4Addr>().ok())
        .map(|ip| PodAddress { ip, vlan })
        .collect()
}

fn addresses(ips: &[Ipv4Addr], vlan: Option<u16>) -> Vec<PodAddress> {
    ips.iter().map(|ip| PodAddress { ip: *ip, vlan }).collect()
}

/// Removes the pod's interface when its namespace still exists and returns the IPv4
/// addresses it had (the last source for the pod's IP). A namespace that is gone only
/// skips this step.
async fn clean_pod_side(env: &CniEnv, errors: &mut Vec<PlumbingError>) -> Vec<Ipv4Addr> {
    let Some(path) = &env.netns else {
        return Vec::new();
    };
    let netns = match Netns::open(path) {
        Ok(ns) => Arc::new(ns),
        Err(e) if e.is_gone() => {
            tracing::debug!(netns = %path.display(), "netns gone, skipping in-netns steps");
            return Vec::new();
        }
        Err(e) => {
            errors.push(PlumbingError::Netns(e));
            return Vec::new();
        }
    };
    match pod_side(netns, &env.ifname).await {
        Ok(ips) => ips,
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    }
}

async fn pod_side(netns: Arc<Netns>, ifname: &str) -> Result<Vec<Ipv4Addr>, PlumbingError> {
    let step = |step: &str| {
        let step = step.to_string();
        move |source| PlumbingError::Netlink { step, source }
    };
    let pod = Netlink::in_netns(netns).map_err(step("open pod netlink"))?;
    let Some(link) = pod
        .link_by_name(ifname)
        .await
        .map_err(step("find pod interface"))?
    else {
        return Ok(Vec::new());
    };
    let addrs = pod
        .addresses_of(link.index)
        .await
        .map_err(step("read pod addresses"))?;
    delete_pod_link(&pod, ifname).await?;
    Ok(addrs
        .iter()
        .filter_map(|a| match a.address {
            IpNet::V4(n) if n.prefix_len() == 32 => Some(n.addr()),
            _ => None,
        })
        .collect())
}

fn finish(
    env: &CniEnv,
    mut errors: Vec<PlumbingError>,
    refused: Option<String>,
) -> Result<Output, Error> {
    if !errors.is_empty() {
        let source = if errors.len() == 1 {
            errors.remove(0)
        } else {
            PlumbingError::Several(errors)
        };
        return Err(Error::Teardown {
            context: format!("del pod {}", env.ifname),
            source,
        });
    }
    match refused {
        Some(reason) => Err(Error::ReleaseRefused {
            ifname: env.ifname.clone(),
            reason,
        }),
        None => Ok(Output::Nothing),
    }
}
