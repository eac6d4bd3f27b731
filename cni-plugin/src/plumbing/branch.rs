//! Branch-ENI (security groups for pods) wiring. The pod side is that of any pod; on the node
//! the pod's traffic is tied to a VLAN sub-interface of the trunk ENI and to route table
//! 100 + VLAN id:
//! - `vlan.eth.<id>`: 802.1Q id `<id>` on the trunk link, the branch ENI's MAC, no address;
//! - table T: `<gw>/32 dev vlan.eth.<id> scope link`, `default via <gw> dev vlan.eth.<id>`;
//! - strict: `<ip>/32 dev <veth> scope link` in T, rules 10 `iif vlan.eth.<id> lookup T` and
//!   `iif <veth> lookup T`: everything the pod sends or receives crosses the branch ENI;
//! - standard: `<ip>/32 dev <veth> scope link` in main, rules 512 `to <ip> lookup main` and
//!   1536 `from <ip> lookup T`: node-local traffic stays on the node, the rest uses the branch.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use ipnet::{IpNet, Ipv4Net};

use super::setup::{bring_up, wire_veth, Wired};
use super::teardown::{remove_unused_branch, teardown_host, HostTeardown, PodAddress};
use super::{host_net, PlumbingError, PodNetwork, Step};
use super::{BRANCH_IIF_RULE_PRIORITY, BRANCH_TABLE_BASE};
use super::{FROM_POD_RULE_PRIORITY, TO_POD_RULE_PRIORITY};
use crate::cni::netconf::SgEnforcingMode;
use crate::names::vlan_link_name;
use crate::netlink::{MacAddr, Netlink, Netns, Route, Rule, VlanLink, RT_TABLE_MAIN};

/// 802.1Q ids: 0 tags priority only, 4095 is reserved.
pub const VLAN_IDS: RangeInclusive<u16> = 1..=4094;
/// Tables the kernel owns (default, main, local); 100 + VLAN must not land on them.
const RESERVED_TABLES: RangeInclusive<u32> = 253..=255;

/// What ipamd says about a pod's branch ENI, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    pub vlan: u16,
    pub eni_mac: MacAddr,
    /// The branch subnet's gateway (network address + 1).
    pub gateway: Ipv4Addr,
    /// Ifindex of the trunk ENI's link on the node.
    pub parent: u32,
}

/// What ADD wires for one branch-ENI pod. `pod.table` is the branch table, 100 + VLAN id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchNetwork {
    pub pod: PodNetwork,
    pub branch: Branch,
    pub mode: SgEnforcingMode,
}

impl BranchNetwork {
    pub fn new(mut pod: PodNetwork, branch: Branch, mode: SgEnforcingMode) -> BranchNetwork {
        pod.table = branch_table(branch.vlan);
        BranchNetwork { pod, branch, mode }
    }

    pub fn vlan_link(&self) -> String {
        vlan_link_name(self.branch.vlan)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VlanIdError {
    #[error("vlan id {0} is outside 1-4094")]
    OutOfRange(i64),
    #[error("vlan id {vlan} would use route table {table}, which the kernel reserves")]
    ReservedTable { vlan: u16, table: u32 },
    #[error("vlan id {0:?} is not a number")]
    NotANumber(String),
}

/// The route table of a branch-ENI pod.
pub fn branch_table(vlan: u16) -> u32 {
    BRANCH_TABLE_BASE + u32::from(vlan)
}

/// A VLAN id that can be wired: valid for 802.1Q and with a table of its own.
pub fn vlan_id(raw: i64) -> Result<u16, VlanIdError> {
    let vlan = u16::try_from(raw)
        .ok()
        .filter(|v| VLAN_IDS.contains(v))
        .ok_or(VlanIdError::OutOfRange(raw))?;
    let table = branch_table(vlan);
    if RESERVED_TABLES.contains(&table) {
        return Err(VlanIdError::ReservedTable { vlan, table });
    }
    Ok(vlan)
}

/// The VLAN id a result record carries in its `mac` field: "0" for a regular pod (Ok(None)),
/// the decimal id for a branch-ENI pod.
pub fn record_vlan(mac: &str) -> Result<Option<u16>, VlanIdError> {
    let raw: i64 = mac
        .parse()
        .map_err(|_| VlanIdError::NotANumber(mac.to_string()))?;
    match raw {
        0 => Ok(None),
        n => vlan_id(n).map(Some),
    }
}

/// The subnet gateway: as ipamd names it, or the subnet's network address + 1 (the VPC
/// router) when it only names the subnet.
pub fn subnet_gateway(named: &str, subnet: &str) -> Result<Ipv4Addr, String> {
    if !named.is_empty() {
        return named
            .parse()
            .map_err(|_| format!("PodENISubnetGW {named:?} is not an IPv4 address"));
    }
    let net: Ipv4Net = subnet
        .parse()
        .map_err(|_| format!("no PodENISubnetGW and SubnetCIDR {subnet:?} is not a prefix"))?;
    let gateway = u32::from(net.network()).checked_add(1).map(Ipv4Addr::from);
    gateway
        .filter(|gw| net.contains(gw))
        .ok_or_else(|| format!("SubnetCIDR {subnet} has no room for a gateway"))
}

/// Table T's routes through the VLAN link: the gateway on-link, then the default via it.
pub fn table_routes(gateway: Ipv4Addr, vlan_index: u32, table: u32) -> [Route; 2] {
    let default = IpNet::V4(Ipv4Net::default());
    [
        Route::link_scope(host_net(gateway), vlan_index, table),
        Route::via(default, IpAddr::V4(gateway), vlan_index, table),
    ]
}

/// The route that delivers to the pod: in T (strict) or main (standard).
pub fn pod_route(mode: SgEnforcingMode, ip: Ipv4Addr, veth_index: u32, table: u32) -> Route {
    let table = match mode {
        SgEnforcingMode::Strict => table,
        SgEnforcingMode::Standard => RT_TABLE_MAIN,
    };
    Route::link_scope(host_net(ip), veth_index, table)
}

/// The rules of one mode, in the order they are added.
pub fn mode_rules(
    mode: SgEnforcingMode,
    vlan_link: &str,
    host_veth: &str,
    ip: Ipv4Addr,
    table: u32,
) -> Vec<Rule> {
    match mode {
        SgEnforcingMode::Strict => vec![
            Rule::iif(vlan_link, table, false).priority(BRANCH_IIF_RULE_PRIORITY),
            Rule::iif(host_veth, table, false).priority(BRANCH_IIF_RULE_PRIORITY),
        ],
        SgEnforcingMode::Standard => vec![
            Rule::to(host_net(ip), RT_TABLE_MAIN).priority(TO_POD_RULE_PRIORITY),
            Rule::from(host_net(ip), table).priority(FROM_POD_RULE_PRIORITY),
        ],
    }
}

/// Wires one branch-ENI pod. On failure everything this call created on the node is removed
/// again (VLAN link, table routes, rules, veth) before the error is returned.
pub async fn setup_branch_pod(
    host: &Netlink,
    pod: &Netlink,
    pod_netns: &Netns,
    net: &BranchNetwork,
) -> Result<Wired, PlumbingError> {
    match wire(host, pod, pod_netns, net).await {
        Ok(wired) => Ok(wired),
        Err(err) => {
            let undo = HostTeardown {
                host_veths: vec![net.pod.host_veth.clone()],
                addresses: vec![PodAddress {
                    ip: net.pod.ip,
                    vlan: Some(net.branch.vlan),
                }],
            };
            if let Err(undo_err) = teardown_host(host, &undo).await {
                tracing::warn!(error = %undo_err, "rollback of branch pod wiring left something behind");
            }
            Err(err)
        }
    }
}

async fn wire(
    host: &Netlink,
    pod: &Netlink,
    pod_netns: &Netns,
    net: &BranchNetwork,
) -> Result<Wired, PlumbingError> {
    clear_stale_rules(host, net).await?;
    let (veth_index, wired) = wire_veth(host, pod, pod_netns, &net.pod).await?;
    let vlan_index = create_vlan_link(host, net).await?;
    let link = net.vlan_link();
    for route in table_routes(net.branch.gateway, vlan_index, net.pod.table) {
        host.replace_route(&route)
            .await
            .step(|| format!("branch table {} route dev {link}", net.pod.table))?;
    }
    let ip = net.pod.ip;
    let route = pod_route(net.mode, ip, veth_index, net.pod.table);
    host.replace_route(&route)
        .await
        .step(|| format!("host route {ip} dev {}", net.pod.host_veth))?;
    for rule in mode_rules(net.mode, &link, &net.pod.host_veth, ip, net.pod.table) {
        host.add_rule(&rule)
            .await
            .step(|| format!("branch rule for {ip}"))?;
    }
    Ok(wired)
}

/// A pod re-created under the same namespace/name gets the same host veth name; iif rules
/// its predecessor left (a DEL that never ran) may point at another VLAN's table, and rules
/// an earlier owner of the address left may route it through another table. Neither may
/// survive next to the new ones, and a branch table they kept alive goes with them when no
/// live pod uses it any more. One dump finds them all; on the usual clean node that is the
/// only round trip.
async fn clear_stale_rules(host: &Netlink, net: &BranchNetwork) -> Result<(), PlumbingError> {
    let rules = host.rules(false).await.step(|| "read host rules".into())?;
    let stale = stale_rules(&rules, &net.pod.host_veth, net.pod.ip);
    for rule in &stale {
        host.delete_rule(rule)
            .await
            .step(|| format!("clear stale rules of {}", net.pod.host_veth))?;
    }
    if !stale.is_empty() {
        tracing::info!(host_veth = %net.pod.host_veth, ip = %net.pod.ip, rules = stale.len(), "removed stale rules");
    }
    for vlan in orphan_candidates(&stale, net.branch.vlan) {
        if let Err(e) = remove_unused_branch(host, vlan).await {
            tracing::warn!(error = %e, vlan, "cannot remove an earlier pod's vlan");
        }
    }
    Ok(())
}

/// Rules that name this pod's host veth (priority 10) or its address (512, 1536).
pub fn stale_rules(rules: &[Rule], host_veth: &str, ip: Ipv4Addr) -> Vec<Rule> {
    let ip = Some(host_net(ip));
    rules
        .iter()
        .filter(|r| match r.priority {
            Some(BRANCH_IIF_RULE_PRIORITY) => r.iif.as_deref() == Some(host_veth),
            Some(TO_POD_RULE_PRIORITY) => r.destination == ip,
            Some(FROM_POD_RULE_PRIORITY) => r.source == ip,
            _ => false,
        })
        .cloned()
        .collect()
}

/// VLANs of other branch tables the stale rules pointed at (ENI tables are 2-100).
fn orphan_candidates(stale: &[Rule], ours: u16) -> BTreeSet<u16> {
    stale
        .iter()
        .filter_map(|r| r.table.checked_sub(BRANCH_TABLE_BASE))
        .filter_map(|v| vlan_id(i64::from(v)).ok())
        .filter(|v| *v != ours)
        .collect()
}

/// Replaces any link of the VLAN link's name (the trunk or the branch may have changed since
/// it was made), then tunes and raises it. Returns its index.
async fn create_vlan_link(host: &Netlink, net: &BranchNetwork) -> Result<u32, PlumbingError> {
    let name = net.vlan_link();
    if host
        .delete_link_by_name(&name)
        .await
        .step(|| format!("remove leftover {name}"))?
    {
        tracing::info!(link = %name, "removed leftover vlan link");
    }
    let vlan = VlanLink {
        name: &name,
        parent: net.branch.parent,
        id: net.branch.vlan,
        mac: net.branch.eni_mac,
    };
    host.create_vlan(&vlan)
        .await
        .step(|| format!("create {name}"))?;
    bring_up(host, &name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn vlan_ids_and_tables() {
        assert_eq!(vlan_id(1), Ok(1));
        assert_eq!(branch_table(1), 101);
        assert_eq!(branch_table(120), 220);
        assert_eq!(vlan_id(4094), Ok(4094));
        assert_eq!(branch_table(4094), 4194);
        for bad in [0, -1, 4095, 4096, 70000] {
            assert_eq!(vlan_id(bad), Err(VlanIdError::OutOfRange(bad)), "{bad}");
        }
        for reserved in [153, 154, 155] {
            assert!(
                matches!(vlan_id(reserved), Err(VlanIdError::ReservedTable { .. })),
                "{reserved}"
            );
        }
        assert_eq!(vlan_id(152), Ok(152));
        assert_eq!(vlan_id(156), Ok(156));
    }

    #[test]
    fn record_encoding_of_the_vlan() {
        assert_eq!(record_vlan("0"), Ok(None));
        assert_eq!(record_vlan("3"), Ok(Some(3)));
        assert_eq!(record_vlan("4094"), Ok(Some(4094)));
        assert_eq!(record_vlan("4095"), Err(VlanIdError::OutOfRange(4095)));
        for bad in ["", "x", "3a", "0a:58:00:00:00:01", "1.5"] {
            assert!(
                matches!(record_vlan(bad), Err(VlanIdError::NotANumber(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn gateway_named_or_derived_from_the_subnet() {
        assert_eq!(subnet_gateway("10.0.32.1", ""), Ok(ip("10.0.32.1")));
        assert_eq!(subnet_gateway("", "10.0.32.0/19"), Ok(ip("10.0.32.1")));
        assert_eq!(subnet_gateway("", "10.0.32.7/19"), Ok(ip("10.0.32.1")));
        assert!(subnet_gateway("", "").is_err());
        assert!(subnet_gateway("gw", "10.0.32.0/19").is_err());
        assert!(subnet_gateway("", "10.0.1.5/32").is_err());
    }

    #[test]
    fn strict_rules_tie_both_links_to_the_table() {
        let rules = mode_rules(
            SgEnforcingMode::Strict,
            "vlan.eth.3",
            "vlanabc",
            ip("10.0.33.7"),
            103,
        );
        assert_eq!(
            rules,
            [
                Rule::iif("vlan.eth.3", 103, false).priority(10),
                Rule::iif("vlanabc", 103, false).priority(10),
            ]
        );
        let route = pod_route(SgEnforcingMode::Strict, ip("10.0.33.7"), 9, 103);
        assert_eq!(route.table, 103);
        assert_eq!(route.destination.to_string(), "10.0.33.7/32");
        assert_eq!(route.oif, Some(9));
    }

    #[test]
    fn standard_rules_are_address_based() {
        let rules = mode_rules(
            SgEnforcingMode::Standard,
            "vlan.eth.3",
            "eniabc",
            ip("10.0.33.7"),
            103,
        );
        let pod = host_net(ip("10.0.33.7"));
        assert_eq!(
            rules,
            [
                Rule::to(pod, 254).priority(512),
                Rule::from(pod, 103).priority(1536),
            ]
        );
        let route = pod_route(SgEnforcingMode::Standard, ip("10.0.33.7"), 9, 103);
        assert_eq!(route.table, RT_TABLE_MAIN);
    }

    #[test]
    fn table_routes_go_through_the_gateway_on_the_vlan() {
        let [gw, default] = table_routes(ip("10.0.32.1"), 7, 103);
        assert_eq!(gw.destination.to_string(), "10.0.32.1/32");
        assert_eq!((gw.oif, gw.table, gw.gateway), (Some(7), 103, None));
        assert!(default.is_default());
        assert_eq!(default.gateway, Some(ip("10.0.32.1").into()));
        assert_eq!((default.oif, default.table), (Some(7), 103));
    }

    #[test]
    fn stale_rules_name_the_veth_or_the_address() {
        let pod = host_net(ip("10.0.1.21"));
        let other = host_net(ip("10.0.1.22"));
        let rules = vec![
            Rule::iif("vlanabc", 101, false).priority(10),
            Rule::iif("vlan.eth.1", 101, false).priority(10),
            Rule::iif("vlanabc", 101, false).priority(11),
            Rule::to(pod, 254).priority(512),
            Rule::to(other, 254).priority(512),
            Rule::from(pod, 3).priority(1536),
            Rule::from(pod, 105).priority(1536),
        ];
        let stale = stale_rules(&rules, "vlanabc", ip("10.0.1.21"));
        assert_eq!(
            stale,
            [&rules[0], &rules[3], &rules[5], &rules[6]].map(Clone::clone)
        );
        let orphans: Vec<u16> = orphan_candidates(&stale, 2).into_iter().collect();
        assert_eq!(
            orphans,
            [1, 5],
            "branch tables only, not ENI table 3 or main"
        );
        assert_eq!(
            orphan_candidates(&stale, 1).len(),
            1,
            "our own vlan is rewired anyway"
        );
    }

    #[test]
    fn branch_network_uses_the_vlan_table() {
        let pod = PodNetwork {
            host_veth: "vlanabc".into(),
            ifname: "eth0".into(),
            ip: ip("10.0.33.7"),
            table: 0,
            mtu: 9001,
        };
        let branch = Branch {
            vlan: 3,
            eni_mac: "02:00:00:00:00:b1".parse().unwrap(),
            gateway: ip("10.0.32.1"),
            parent: 4,
        };
        let net = BranchNetwork::new(pod, branch, SgEnforcingMode::Strict);
        assert_eq!(net.pod.table, 103);
        assert_eq!(net.vlan_link(), "vlan.eth.3");
    }
}
