//! ADD's kernel work for a regular pod, and the veth part every pod shares.

use super::teardown::{teardown_host, HostTeardown, PodAddress};
use super::{gateway, host_net, sysctl, PlumbingError, PodNetwork, Step};
use super::{FROM_POD_RULE_PRIORITY, TO_POD_RULE_PRIORITY};
use crate::netlink::{MacAddr, Netlink, Netns, Route, Rule, VethPair, RT_TABLE_MAIN};

/// The MACs of both veth ends, for the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wired {
    pub host_mac: MacAddr,
    pub pod_mac: MacAddr,
}

/// Wires one pod. On failure, everything this call created on the node is removed again
/// (the pod end goes with its host peer) before the error is returned.
pub async fn setup_pod(
    host: &Netlink,
    pod: &Netlink,
    pod_netns: &Netns,
    net: &PodNetwork,
) -> Result<Wired, PlumbingError> {
    match wire(host, pod, pod_netns, net).await {
        Ok(wired) => Ok(wired),
        Err(err) => {
            let undo = HostTeardown {
                host_veths: vec![net.host_veth.clone()],
                addresses: vec![PodAddress {
                    ip: net.ip,
                    vlan: None,
                }],
            };
            if let Err(undo_err) = teardown_host(host, &undo).await {
                tracing::warn!(error = %undo_err, "rollback of pod wiring left something behind");
            }
            Err(err)
        }
    }
}

async fn wire(
    host: &Netlink,
    pod: &Netlink,
    pod_netns: &Netns,
    net: &PodNetwork,
) -> Result<Wired, PlumbingError> {
    let (host_index, wired) = wire_veth(host, pod, pod_netns, net).await?;
    wire_host_side(host, net, host_index).await?;
    Ok(wired)
}

/// The part every pod shares: the veth pair, its host end up, and the pod side complete
/// (address, gateway routes, permanent neighbour). Returns the host end's index.
pub(super) async fn wire_veth(
    host: &Netlink,
    pod: &Netlink,
    pod_netns: &Netns,
    net: &PodNetwork,
) -> Result<(u32, Wired), PlumbingError> {
    // A pod re-created under the same namespace/name gets the same host veth name; a link
    // left from its predecessor would make the create fail.
    if host
        .delete_link_by_name(&net.host_veth)
        .await
        .step(|| "remove leftover host veth".into())?
    {
        tracing::info!(link = %net.host_veth, "removed leftover host veth");
    }
    // An address of our choosing, not the kernel's: udev's MACAddressPolicy=persistent
    // rewrites kernel-random veth addresses some time after creation, which would
    // invalidate the pod's permanent neighbour entry. Each veth pair is its own link, so
    // another link's address does not matter.
    let host_mac = MacAddr::random_local();
    let pair = VethPair {
        name: &net.host_veth,
        mac: Some(host_mac),
        mtu: net.mtu,
        peer_name: &net.ifname,
        peer_netns: pod_netns,
    };
    host.create_veth(&pair)
        .await
        .step(|| "create veth".into())?;
    tracing::debug!(host_veth = %net.host_veth, %host_mac, "veth created");

    let host_index = bring_up(host, &net.host_veth).await?;
    let pod_mac = wire_pod_side(pod, net, host_mac).await?;
    Ok((host_index, Wired { host_mac, pod_mac }))
}

/// Sysctls first, then up: IPv6 settings must be in place before the link starts
/// processing router advertisements. Returns the link's index.
pub(super) async fn bring_up(host: &Netlink, name: &str) -> Result<u32, PlumbingError> {
    sysctl::tune_host_link(host.netns().map(|n| n.as_ref()), name)?;
    let link = host
        .link_by_name(name)
        .await
        .step(|| format!("find {name}"))?
        .ok_or_else(|| PlumbingError::Mismatch(format!("{name} vanished")))?;
    host.set_link_up(link.index)
        .await
        .step(|| format!("set {name} up"))?;
    Ok(link.index)
}

async fn wire_pod_side(
    pod: &Netlink,
    net: &PodNetwork,
    host_mac: MacAddr,
) -> Result<MacAddr, PlumbingError> {
    let ifname = &net.ifname;
    let link = pod
        .link_by_name(ifname)
        .await
        .step(|| format!("find pod {ifname}"))?
        .ok_or_else(|| PlumbingError::Mismatch(format!("pod {ifname} vanished")))?;
    let idx = link.index;
    pod.set_link_up(idx)
        .await
        .step(|| format!("set pod {ifname} up"))?;

    // Routes before the address, as aws-node does: the gateway is reachable only through
    // its link-scope host route, which the default route needs to exist first.
    let gw_route = Route::link_scope(host_net_of_gateway(), idx, RT_TABLE_MAIN);
    pod.replace_route(&gw_route)
        .await
        .step(|| format!("pod route {} dev {ifname}", gateway()))?;
    let default = Route::via("0.0.0.0/0".parse().unwrap(), gateway(), idx, RT_TABLE_MAIN);
    pod.replace_route(&default)
        .await
        .step(|| format!("pod default route dev {ifname}"))?;
    pod.add_address(idx, host_net(net.ip))
        .await
        .step(|| format!("pod address {}", net.ip))?;

    // The host veth has no address; the pod learns its gateway's MAC only from this entry.
    pod.replace_permanent_neighbour(idx, gateway(), host_mac)
        .await
        .step(|| format!("pod neighbour {}", gateway()))?;
    link.mac
        .ok_or_else(|| PlumbingError::Mismatch(format!("pod {ifname} has no mac")))
}

fn host_net_of_gateway() -> ipnet::IpNet {
    host_net(super::POD_GATEWAY)
}

async fn wire_host_side(host: &Netlink, net: &PodNetwork, index: u32) -> Result<(), PlumbingError> {
    let ip = host_net(net.ip);
    let route = Route::link_scope(ip, index, RT_TABLE_MAIN);
    host.replace_route(&route)
        .await
        .step(|| format!("host route {ip} dev {}", net.host_veth))?;

    // Rules left by an earlier owner of this address (a DEL that never ran) would send the
    // pod's traffic through the wrong table; replace them rather than add beside them.
    let stale_from = Rule::from(ip, 0).priority(FROM_POD_RULE_PRIORITY);
    host.delete_rules(&stale_from)
        .await
        .step(|| format!("clear old rules from {ip}"))?;
    let to = Rule::to(ip, RT_TABLE_MAIN).priority(TO_POD_RULE_PRIORITY);
    host.add_rule(&to).await.step(|| format!("rule to {ip}"))?;
    if net.table != RT_TABLE_MAIN {
        let from = Rule::from(ip, net.table).priority(FROM_POD_RULE_PRIORITY);
        host.add_rule(&from)
            .await
            .step(|| format!("rule from {ip} lookup {}", net.table))?;
    }
    Ok(())
}
