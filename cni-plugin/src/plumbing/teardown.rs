//! DEL's kernel work: remove what ADD made, never fail on what is already gone, keep going
//! after a failure and report all of them.

use std::net::{IpAddr, Ipv4Addr};

use super::branch::branch_table;
use super::{host_net, PlumbingError, Step};
use super::{BRANCH_IIF_RULE_PRIORITY, FROM_POD_RULE_PRIORITY, TO_POD_RULE_PRIORITY};
use crate::names::vlan_link_name;
use crate::netlink::{Link, Netlink, NetlinkError, Route, Rule, RT_TABLE_MAIN};

/// One pod address to clean up; `vlan` is set for branch-ENI pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    pub vlan: Option<u16>,
}

/// What to remove on the node for one attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostTeardown {
    /// Candidate host veth names (from the pod name and from prevResult; usually one).
    pub host_veths: Vec<String>,
    pub addresses: Vec<PodAddress>,
}

/// The node's links, IPv4 routes (every table) and, when a branch pod is involved, rules:
/// read once, so each decision below costs no further round trip.
#[derive(Debug, Default)]
struct NodeState {
    links: Vec<Link>,
    routes: Vec<Route>,
    rules: Vec<Rule>,
}

/// Removes the node-side state of one attachment: rules 512/1536 (every copy, any table) and
/// the /32 route in main; for a branch-ENI pod also its iif rules, the VLAN link, the
/// priority-10 rules and routes of table 100 + VLAN (both modes, always, so a changed mode
/// cannot leak); then the host veth.
///
/// An address whose /32 route in main points at a link other than this pod's veth has been
/// handed to another pod since (a late DEL, or one replayed from an old prevResult); its rules
/// are that pod's now and stay. Likewise a branch table that a live veth of another pod still
/// uses stays with its VLAN link.
pub async fn teardown_host(host: &Netlink, t: &HostTeardown) -> Result<(), PlumbingError> {
    let mut errors = Vec::new();
    let branch = t.addresses.iter().any(|a| a.vlan.is_some());
    let node = read_node(host, branch, &mut errors).await;
    let released: Vec<Ipv4Addr> = t.addresses.iter().map(|a| a.ip).collect();
    let ours: Vec<u32> = node
        .links
        .iter()
        .filter(|l| t.host_veths.contains(&l.name))
        .filter(|l| match serves_other_pod(&node.routes, l.index, &released) {
            Some(other) => {
                tracing::warn!(link = %l.name, ip = %other, "host veth now serves another pod; leaving it");
                false
            }
            None => true,
        })
        .map(|l| l.index)
        .collect();
    for addr in &t.addresses {
        match owned_elsewhere(&node.routes, addr.ip, &ours) {
            Some(owner) => {
                tracing::warn!(ip = %addr.ip, link = owner, "address is routed to another link; leaving its rules")
            }
            None => errors.extend(remove_address(host, addr.ip, ours.first().copied()).await),
        }
        if let Some(vlan) = addr.vlan {
            errors.extend(remove_branch(host, &node, &t.host_veths, addr.ip, vlan).await);
        }
    }
    for index in ours {
        if let Err(e) = host
            .delete_link(index)
            .await
            .step(|| format!("delete host veth #{index}"))
        {
            errors.push(e);
        }
    }
    outcome(errors)
}

/// Removes table 100 + `vlan`, its VLAN link and priority-10 rules when no live pod uses
/// them any more (what a pod that vanished without a DEL left behind).
pub(super) async fn remove_unused_branch(host: &Netlink, vlan: u16) -> Result<(), PlumbingError> {
    let mut errors = Vec::new();
    let node = read_node(host, true, &mut errors).await;
    errors.extend(remove_branch(host, &node, &[], Ipv4Addr::UNSPECIFIED, vlan).await);
    outcome(errors)
}

/// One error as itself, several as one that lists them all.
fn outcome(mut errors: Vec<PlumbingError>) -> Result<(), PlumbingError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(PlumbingError::Several(errors)),
    }
}

/// What cannot be read counts as empty: the deletes that follow still run, and the read
/// error is reported with theirs.
async fn read_node(host: &Netlink, rules: bool, errors: &mut Vec<PlumbingError>) -> NodeState {
    fn keep<T>(
        r: Result<Vec<T>, NetlinkError>,
        step: &str,
        errors: &mut Vec<PlumbingError>,
    ) -> Vec<T> {
        r.step(|| step.into()).unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        })
    }
    NodeState {
        links: keep(host.links().await, "list host links", errors),
        routes: keep(host.routes(false).await, "list host routes", errors),
        rules: match rules {
            true => keep(host.rules(false).await, "list host rules", errors),
            false => Vec::new(),
        },
    }
}

/// An address other than the released ones that a host route sends to link `index`. Host
/// veths are named after the pod, so a newer sandbox of the same pod reuses the name: the
/// older sandbox's DEL must not take the newer one's link with it.
fn serves_other_pod(routes: &[Route], index: u32, released: &[Ipv4Addr]) -> Option<IpAddr> {
    routes
        .iter()
        .filter(|r| r.oif == Some(index) && r.destination.prefix_len() == 32)
        .map(|r| r.destination.addr())
        .find(|ip| !matches!(ip, IpAddr::V4(v4) if released.contains(v4)))
}

fn owned_elsewhere(routes: &[Route], ip: Ipv4Addr, ours: &[u32]) -> Option<u32> {
    routes
        .iter()
        .filter(|r| r.table == RT_TABLE_MAIN && r.destination == host_net(ip))
        .find_map(|r| r.oif.filter(|oif| !ours.contains(oif)))
}

/// Collects the error of each step and goes on with the next.
fn note(errors: &mut Vec<PlumbingError>, result: Result<(), PlumbingError>) {
    if let Err(e) = result {
        errors.push(e);
    }
}

async fn remove_address(host: &Netlink, ip: Ipv4Addr, our_link: Option<u32>) -> Vec<PlumbingError> {
    let ip = host_net(ip);
    let mut errors = Vec::new();
    let to = Rule::to(ip, 0).priority(TO_POD_RULE_PRIORITY);
    let r = host.delete_rules(&to).await.map(drop);
    note(&mut errors, r.step(|| format!("delete rules to {ip}")));
    let from = Rule::from(ip, 0).priority(FROM_POD_RULE_PRIORITY);
    let r = host.delete_rules(&from).await.map(drop);
    note(&mut errors, r.step(|| format!("delete rules from {ip}")));
    let mut route = Route::link_scope(ip, 0, RT_TABLE_MAIN);
    route.oif = our_link;
    let r = host.delete_route(&route).await.map(drop);
    note(&mut errors, r.step(|| format!("delete host route {ip}")));
    errors
}

/// The branch-ENI part: this pod's iif rules wherever they point, then (unless another pod
/// still uses it) table 100 + VLAN's routes, the VLAN link and every priority-10 rule of the
/// table.
async fn remove_branch(
    host: &Netlink,
    node: &NodeState,
    our_veths: &[String],
    ip: Ipv4Addr,
    vlan: u16,
) -> Vec<PlumbingError> {
    let mut errors = Vec::new();
    for veth in our_veths {
        let iif = Rule {
            iif: Some(veth.clone()),
            ..Rule::default()
        }
        .priority(BRANCH_IIF_RULE_PRIORITY);
        let r = host.delete_rules(&iif).await.map(drop);
        note(
            &mut errors,
            r.step(|| format!("delete iif rules of {veth}")),
        );
    }
    let table = branch_table(vlan);
    let link = vlan_link_name(vlan);
    if let Some(user) = claimed_elsewhere(node, table, &link, our_veths, ip) {
        tracing::warn!(table, user = %user, "branch table is in use by another pod; leaving it");
        return errors;
    }
    for route in node.routes.iter().filter(|r| r.table == table) {
        let r = host.delete_route(route).await.map(drop);
        note(
            &mut errors,
            r.step(|| format!("delete route in table {table}")),
        );
    }
    let r = host.delete_link_by_name(&link).await.map(drop);
    note(&mut errors, r.step(|| format!("delete {link}")));
    let rules = Rule {
        table,
        ..Rule::default()
    }
    .priority(BRANCH_IIF_RULE_PRIORITY);
    let r = host.delete_rules(&rules).await.map(drop);
    note(
        &mut errors,
        r.step(|| format!("delete iif rules of table {table}")),
    );
    errors
}

/// Who else uses a branch table: a live link other than this pod's veth and the VLAN link
/// that an iif rule sends into it (strict), or another address with a route in main whose
/// from-rule looks it up (standard). Rules of links that are gone do not count: they are
/// leftovers to remove.
fn claimed_elsewhere(
    node: &NodeState,
    table: u32,
    vlan_link: &str,
    our_veths: &[String],
    ip: Ipv4Addr,
) -> Option<String> {
    let live = |name: &str| node.links.iter().any(|l| l.name == name);
    let routed = |dst: &ipnet::IpNet| {
        node.routes
            .iter()
            .any(|r| r.table == RT_TABLE_MAIN && r.destination == *dst)
    };
    node.rules
        .iter()
        .filter(|r| r.table == table)
        .find_map(|rule| match (&rule.iif, &rule.source) {
            (Some(iif), _) if iif != vlan_link && !our_veths.contains(iif) && live(iif) => {
                Some(iif.clone())
            }
            (None, Some(src)) if *src != host_net(ip) && routed(src) => Some(src.to_string()),
            _ => None,
        })
}

/// Deletes the pod's interface inside its namespace (its host peer goes with it); Ok(false)
/// when it is not there.
pub async fn delete_pod_link(pod: &Netlink, ifname: &str) -> Result<bool, PlumbingError> {
    pod.delete_link_by_name(ifname)
        .await
        .step(|| format!("delete pod {ifname}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, index: u32) -> Link {
        Link {
            index,
            name: name.into(),
            mac: None,
            mtu: 1500,
            up: true,
            kind: Some("veth".into()),
            link_index: None,
            vlan_id: None,
        }
    }

    fn node(links: &[(&str, u32)], rules: Vec<Rule>, main: &[&str]) -> NodeState {
        NodeState {
            links: links.iter().map(|(n, i)| link(n, *i)).collect(),
            routes: main
                .iter()
                .map(|dst| Route::link_scope(dst.parse().unwrap(), 9, RT_TABLE_MAIN))
                .collect(),
            rules,
        }
    }

    fn claimed(n: &NodeState) -> Option<String> {
        let ours = vec!["vlanaaa".to_string()];
        claimed_elsewhere(n, 103, "vlan.eth.3", &ours, "10.0.1.10".parse().unwrap())
    }

    #[test]
    fn own_and_vlan_link_rules_do_not_claim_the_table() {
        let rules = vec![
            Rule::iif("vlan.eth.3", 103, false).priority(10),
            Rule::iif("vlanaaa", 103, false).priority(10),
            Rule::from("10.0.1.10/32".parse().unwrap(), 103).priority(1536),
        ];
        let n = node(
            &[("vlanaaa", 5), ("vlan.eth.3", 6)],
            rules,
            &["10.0.1.10/32"],
        );
        assert_eq!(claimed(&n), None);
    }

    #[test]
    fn a_live_veth_of_another_pod_claims_the_table() {
        let rules = vec![Rule::iif("vlanbbb", 103, false).priority(10)];
        let live = node(&[("vlanbbb", 7)], rules.clone(), &[]);
        assert_eq!(claimed(&live).as_deref(), Some("vlanbbb"));
        let leftover = node(&[], rules, &[]);
        assert_eq!(
            claimed(&leftover),
            None,
            "a rule of a deleted veth is a leftover"
        );
    }

    #[test]
    fn another_routed_address_claims_the_table() {
        let rules = vec![Rule::from("10.0.1.11/32".parse().unwrap(), 103).priority(1536)];
        let live = node(&[], rules.clone(), &["10.0.1.11/32"]);
        assert_eq!(claimed(&live).as_deref(), Some("10.0.1.11/32"));
        assert_eq!(claimed(&node(&[], rules, &[])), None);
        let other_table = vec![Rule::iif("vlanbbb", 104, false).priority(10)];
        assert_eq!(claimed(&node(&[("vlanbbb", 7)], other_table, &[])), None);
    }
}
