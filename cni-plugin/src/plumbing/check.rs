//! CHECK's comparison of live state with what ADD reported. Read-only: drift is reported,
//! never repaired.

use std::net::{IpAddr, Ipv4Addr};

use super::branch::{branch_table, mode_rules, pod_route};
use super::{gateway, host_net, PlumbingError, Step, POD_GATEWAY};
use super::{FROM_POD_RULE_PRIORITY, TO_POD_RULE_PRIORITY};
use crate::cni::netconf::SgEnforcingMode;
use crate::names::vlan_link_name;
use crate::netlink::{Link, MacAddr, NeighbourState, Netlink, Route, Rule, RT_TABLE_MAIN};

/// What prevResult says the attachment looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub host_veth: String,
    pub host_mac: Option<MacAddr>,
    pub ifname: String,
    pub pod_mac: Option<MacAddr>,
    pub ip: Ipv4Addr,
    /// None when prevResult does not tell (the from-rule is then not checked).
    pub table: Option<u32>,
}

/// What prevResult says about a branch-ENI pod beyond the veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedBranch {
    /// The veth pair and address; `table` is not consulted (it is 100 + `vlan`).
    pub pod: Expected,
    pub vlan: u16,
    /// The branch ENI's MAC, when the result lists the VLAN link.
    pub eni_mac: Option<MacAddr>,
    /// The subnet gateway, when the result names it.
    pub gateway: Option<Ipv4Addr>,
    pub mode: SgEnforcingMode,
}

fn mismatch(what: String) -> PlumbingError {
    PlumbingError::Mismatch(what)
}

/// Returns the first difference found, pod side first.
pub async fn check_pod(
    host: &Netlink,
    pod: &Netlink,
    want: &Expected,
) -> Result<(), PlumbingError> {
    let host_link = check_veth_pair(host, pod, want).await?;
    check_host_routing(host, want, &host_link).await
}

/// Returns the first difference found: pod side, VLAN link and its trunk, table 100 + VLAN,
/// then the routes and rules of the mode the pod was wired in.
pub async fn check_branch_pod(
    host: &Netlink,
    pod: &Netlink,
    want: &ExpectedBranch,
) -> Result<(), PlumbingError> {
    let veth = check_veth_pair(host, pod, &want.pod).await?;
    let vlan = check_vlan_link(host, want).await?;
    let routes = host
        .routes(false)
        .await
        .step(|| "read host routes".into())?;
    let rules = host.rules(false).await.step(|| "read host rules".into())?;
    match branch_drift(&routes, &rules, want, vlan.index, veth.index) {
        Some(what) => Err(mismatch(what)),
        None => Ok(()),
    }
}

/// The veth pair and the pod side, as every pod has them; returns the host end.
async fn check_veth_pair(
    host: &Netlink,
    pod: &Netlink,
    want: &Expected,
) -> Result<Link, PlumbingError> {
    let pod_link = check_link(pod, &want.ifname, want.pod_mac, "pod").await?;
    check_pod_routes(pod, want, &pod_link).await?;
    let host_link = check_link(host, &want.host_veth, want.host_mac, "host").await?;
    check_neighbour(pod, &pod_link, host_link.mac).await?;
    Ok(host_link)
}

/// The VLAN link: 802.1Q with the pod's id, the branch ENI's MAC, up, on a trunk link that
/// exists and is up (a VLAN link whose trunk is down carries nothing).
async fn check_vlan_link(host: &Netlink, want: &ExpectedBranch) -> Result<Link, PlumbingError> {
    let name = vlan_link_name(want.vlan);
    let link = check_link(host, &name, want.eni_mac, "vlan").await?;
    if link.kind.as_deref() != Some("vlan") || link.vlan_id != Some(want.vlan) {
        return Err(mismatch(format!(
            "vlan interface {name} is not 802.1Q id {} (kind {}, id {})",
            want.vlan,
            link.kind.as_deref().unwrap_or("-"),
            link.vlan_id.map_or("-".into(), |id| id.to_string()),
        )));
    }
    let parent = link
        .link_index
        .ok_or_else(|| mismatch(format!("vlan interface {name} has no trunk link")))?;
    let trunk = host
        .link_by_index(parent)
        .await
        .step(|| format!("read trunk link #{parent}"))?
        .ok_or_else(|| mismatch(format!("trunk link #{parent} of {name} is missing")))?;
    if !trunk.up {
        return Err(mismatch(format!(
            "trunk link {} of {name} is down",
            trunk.name
        )));
    }
    Ok(link)
}

/// Compares table 100 + VLAN and the mode's route and rules with what ADD makes.
fn branch_drift(
    routes: &[Route],
    rules: &[Rule],
    want: &ExpectedBranch,
    vlan_index: u32,
    veth_index: u32,
) -> Option<String> {
    let table = branch_table(want.vlan);
    let link = vlan_link_name(want.vlan);
    let has = |r: &Route| {
        routes.iter().any(|x| {
            x.table == r.table
                && x.destination == r.destination
                && x.oif == r.oif
                && x.gateway == r.gateway
        })
    };
    let in_table = |r: &&Route| r.table == table && r.oif == Some(vlan_index);
    let default = routes.iter().filter(in_table).find(|r| r.is_default());
    match (want.gateway, default) {
        (_, None) => return Some(format!("table {table} has no default route dev {link}")),
        (Some(gw), Some(d)) if d.gateway != Some(IpAddr::V4(gw)) => {
            return Some(format!("table {table} default route is not via {gw}"))
        }
        (Some(gw), _) if !has(&Route::link_scope(host_net(gw), vlan_index, table)) => {
            return Some(format!("table {table} route {gw} dev {link} is missing"))
        }
        _ => {}
    }

    let ip = want.pod.ip;
    let route = pod_route(want.mode, ip, veth_index, table);
    if !has(&route) {
        return Some(format!(
            "route {ip} dev {} in table {} is missing",
            want.pod.host_veth, route.table
        ));
    }
    let expected = mode_rules(want.mode, &link, &want.pod.host_veth, ip, table);
    expected
        .iter()
        .find(|r| !rules.contains(r))
        .map(|r| format!("host rule {} is missing", describe_rule(r)))
}

fn describe_rule(rule: &Rule) -> String {
    let from = rule.source.map_or("all".into(), |s| s.to_string());
    let mut s = format!("{}: from {from}", rule.priority.unwrap_or(0));
    if let Some(dst) = rule.destination {
        s += &format!(" to {dst}");
    }
    if let Some(iif) = &rule.iif {
        s += &format!(" iif {iif}");
    }
    let table = match rule.table {
        RT_TABLE_MAIN => "main".to_string(),
        t => t.to_string(),
    };
    s + &format!(" lookup {table}")
}

async fn check_link(
    nl: &Netlink,
    name: &str,
    mac: Option<MacAddr>,
    side: &str,
) -> Result<Link, PlumbingError> {
    let link = nl
        .link_by_name(name)
        .await
        .step(|| format!("read {side} interface {name}"))?
        .ok_or_else(|| mismatch(format!("{side} interface {name} is missing")))?;
    if let (Some(want), Some(have)) = (mac, link.mac) {
        if want != have {
            return Err(mismatch(format!(
                "{side} interface {name} has mac {have}, expected {want}"
            )));
        }
    }
    if !link.up {
        return Err(mismatch(format!("{side} interface {name} is down")));
    }
    Ok(link)
}

async fn check_pod_routes(
    pod: &Netlink,
    want: &Expected,
    link: &Link,
) -> Result<(), PlumbingError> {
    let ifname = &want.ifname;
    let addrs = pod
        .addresses_of(link.index)
        .await
        .step(|| format!("read pod {ifname} addresses"))?;
    if !addrs.iter().any(|a| a.address == host_net(want.ip)) {
        return Err(mismatch(format!(
            "pod interface {ifname} lacks address {}/32",
            want.ip
        )));
    }
    let routes = pod
        .routes_in_table(RT_TABLE_MAIN, false)
        .await
        .step(|| "read pod routes".into())?;
    let on_link = |r: &&Route| r.oif == Some(link.index);
    if !routes
        .iter()
        .filter(on_link)
        .any(|r| r.destination == host_net(POD_GATEWAY))
    {
        return Err(mismatch(format!(
            "pod route {POD_GATEWAY} dev {ifname} scope link is missing"
        )));
    }
    if !routes
        .iter()
        .filter(on_link)
        .any(|r| r.is_default() && r.gateway == Some(gateway()))
    {
        return Err(mismatch(format!(
            "pod default route via {POD_GATEWAY} dev {ifname} is missing"
        )));
    }
    Ok(())
}

async fn check_neighbour(
    pod: &Netlink,
    link: &Link,
    host_mac: Option<MacAddr>,
) -> Result<(), PlumbingError> {
    let neighbours = pod
        .neighbours(false)
        .await
        .step(|| "read pod neighbours".into())?;
    let entry = neighbours
        .iter()
        .find(|n| n.index == link.index && n.ip == gateway());
    match entry {
        Some(n) if n.state == NeighbourState::Permanent && n.mac == host_mac => Ok(()),
        Some(n) => Err(mismatch(format!(
            "pod neighbour {POD_GATEWAY} is {:?} {}, expected permanent {}",
            n.state,
            n.mac.map_or("-".into(), |m| m.to_string()),
            host_mac.map_or("-".into(), |m| m.to_string()),
        ))),
        None => Err(mismatch(format!("pod neighbour {POD_GATEWAY} is missing"))),
    }
}

async fn check_host_routing(
    host: &Netlink,
    want: &Expected,
    link: &Link,
) -> Result<(), PlumbingError> {
    let ip = host_net(want.ip);
    let routes = host
        .routes_in_table(RT_TABLE_MAIN, false)
        .await
        .step(|| "read host routes".into())?;
    if !routes
        .iter()
        .any(|r| r.destination == ip && r.oif == Some(link.index))
    {
        return Err(mismatch(format!(
            "host route {ip} dev {} is missing",
            want.host_veth
        )));
    }
    let rules = host.rules(false).await.step(|| "read host rules".into())?;
    let to = Rule::to(ip, RT_TABLE_MAIN).priority(TO_POD_RULE_PRIORITY);
    if !rules.contains(&to) {
        return Err(mismatch(format!(
            "host rule {TO_POD_RULE_PRIORITY}: to {ip} lookup main is missing"
        )));
    }
    match want.table {
        Some(table) if table != RT_TABLE_MAIN => {
            let from = Rule::from(ip, table).priority(FROM_POD_RULE_PRIORITY);
            if !rules.contains(&from) {
                return Err(mismatch(format!(
                    "host rule {FROM_POD_RULE_PRIORITY}: from {ip} lookup {table} is missing"
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn want(mode: SgEnforcingMode) -> ExpectedBranch {
        ExpectedBranch {
            pod: Expected {
                host_veth: "vlanaaa".into(),
                host_mac: None,
                ifname: "eth0".into(),
                pod_mac: None,
                ip: ip("10.0.1.10"),
                table: None,
            },
            vlan: 3,
            eni_mac: None,
            gateway: Some(ip("10.0.1.1")),
            mode,
        }
    }

    /// Routes and rules exactly as ADD makes them; VLAN link #6, host veth #5.
    fn wired(mode: SgEnforcingMode) -> (Vec<Route>, Vec<Rule>) {
        let mut routes = super::super::branch::table_routes(ip("10.0.1.1"), 6, 103).to_vec();
        routes.push(pod_route(mode, ip("10.0.1.10"), 5, 103));
        let rules = mode_rules(mode, "vlan.eth.3", "vlanaaa", ip("10.0.1.10"), 103);
        (routes, rules)
    }

    #[test]
    fn fresh_wiring_has_no_drift() {
        for mode in [SgEnforcingMode::Strict, SgEnforcingMode::Standard] {
            let (routes, rules) = wired(mode);
            assert_eq!(branch_drift(&routes, &rules, &want(mode), 6, 5), None);
        }
    }

    #[test]
    fn each_missing_piece_is_named() {
        let strict = SgEnforcingMode::Strict;
        let (routes, rules) = wired(strict);
        let drift = |routes: &[Route], rules: &[Rule]| {
            branch_drift(routes, rules, &want(strict), 6, 5).unwrap_or_default()
        };
        assert!(drift(&routes[1..], &rules).contains("route 10.0.1.1 dev vlan.eth.3"));
        assert!(drift(&[routes[0].clone(), routes[2].clone()], &rules).contains("no default"));
        assert!(drift(&routes[..2], &rules).contains("route 10.0.1.10 dev vlanaaa in table 103"));
        assert_eq!(
            drift(&routes, &rules[..1]),
            "host rule 10: from all iif vlanaaa lookup 103 is missing"
        );
        let standard = want(SgEnforcingMode::Standard);
        let found = branch_drift(&routes, &rules, &standard, 6, 5).unwrap();
        assert!(found.contains("in table 254 is missing"), "{found}");
    }

    #[test]
    fn wrong_gateway_is_drift_and_unknown_gateway_is_not_checked() {
        let (mut routes, rules) = wired(SgEnforcingMode::Strict);
        routes[1].gateway = Some(ip("10.0.1.99").into());
        let found = branch_drift(&routes, &rules, &want(SgEnforcingMode::Strict), 6, 5);
        assert!(found.unwrap().contains("not via 10.0.1.1"));
        let unknown = ExpectedBranch {
            gateway: None,
            ..want(SgEnforcingMode::Strict)
        };
        assert_eq!(branch_drift(&routes, &rules, &unknown, 6, 5), None);
    }
}
