//! CHECK's comparison of live state with what ADD reported. Read-only: drift is reported,
//! never repaired.

use std::net::Ipv4Addr;

use super::{gateway, host_net, PlumbingError, Step, POD_GATEWAY};
use super::{FROM_POD_RULE_PRIORITY, TO_POD_RULE_PRIORITY};
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

fn mismatch(what: String) -> PlumbingError {
    PlumbingError::Mismatch(what)
}

/// Returns the first difference found, pod side first.
pub async fn check_pod(
    host: &Netlink,
    pod: &Netlink,
    want: &Expected,
) -> Result<(), PlumbingError> {
    let pod_link = check_link(pod, &want.ifname, want.pod_mac, "pod").await?;
    check_pod_routes(pod, want, &pod_link).await?;
    let host_link = check_link(host, &want.host_veth, want.host_mac, "host").await?;
    check_neighbour(pod, &pod_link, host_link.mac).await?;
    check_host_routing(host, want, &host_link).await
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
