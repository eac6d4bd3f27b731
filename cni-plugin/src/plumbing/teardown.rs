//! DEL's kernel work: remove what ADD made, never fail on what is already gone, keep going
//! after a failure and report all of them.

use std::net::Ipv4Addr;

use super::TO_POD_RULE_PRIORITY;
use super::{host_net, PlumbingError, Step};
use super::{BRANCH_IIF_RULE_PRIORITY, BRANCH_TABLE_BASE, FROM_POD_RULE_PRIORITY};
use crate::names::vlan_link_name;
use crate::netlink::{Netlink, Route, Rule, RT_TABLE_MAIN};

/// One pod address to clean up; `vlan` is set for branch-ENI pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    pub vlan: Option<u32>,
}

/// What to remove on the node for one attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostTeardown {
    /// Candidate host veth names (from the pod name and from prevResult; usually one).
    pub host_veths: Vec<String>,
    pub addresses: Vec<PodAddress>,
}

/// Removes the node-side state of one attachment: rules 512/1536 (every copy, any table),
/// the /32 route, branch-ENI VLAN link and iif rules, then the host veth.
///
/// An address whose /32 route points at a link other than this pod's veth has been handed to
/// another pod since (a late DEL, or one replayed from an old prevResult); its rules are that
/// pod's now and stay.
pub async fn teardown_host(host: &Netlink, t: &HostTeardown) -> Result<(), PlumbingError> {
    let mut errors = Vec::new();
    let mut ours = Vec::new();
    for name in &t.host_veths {
        match host
            .link_by_name(name)
            .await
            .step(|| format!("find host veth {name}"))
        {
            Ok(Some(link)) => ours.push(link.index),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    let main = match host.routes_in_table(RT_TABLE_MAIN, false).await {
        Ok(routes) => routes,
        Err(e) => {
            errors.push(PlumbingError::Netlink {
                step: "list main routes".into(),
                source: e,
            });
            Vec::new()
        }
    };
    for addr in &t.addresses {
        if let Some(owner) = owned_elsewhere(&main, addr.ip, &ours) {
            tracing::warn!(ip = %addr.ip, link = owner, "address is routed to another link; leaving its rules");
            continue;
        }
        errors.extend(remove_address(host, addr, ours.first().copied()).await);
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
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(PlumbingError::Several(errors)),
    }
}

fn owned_elsewhere(main: &[Route], ip: Ipv4Addr, ours: &[u32]) -> Option<u32> {
    main.iter()
        .filter(|r| r.destination == host_net(ip))
        .find_map(|r| r.oif.filter(|oif| !ours.contains(oif)))
}

async fn remove_address(
    host: &Netlink,
    addr: &PodAddress,
    our_link: Option<u32>,
) -> Vec<PlumbingError> {
    let ip = host_net(addr.ip);
    let mut errors = Vec::new();
    let mut note = |r: Result<(), PlumbingError>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };

    let to = Rule::to(ip, 0).priority(TO_POD_RULE_PRIORITY);
    note(
        host.delete_rules(&to)
            .await
            .map(drop)
            .step(|| format!("delete rules to {ip}")),
    );
    let from = Rule::from(ip, 0).priority(FROM_POD_RULE_PRIORITY);
    note(
        host.delete_rules(&from)
            .await
            .map(drop)
            .step(|| format!("delete rules from {ip}")),
    );
    let mut route = Route::link_scope(ip, 0, RT_TABLE_MAIN);
    route.oif = our_link;
    note(
        host.delete_route(&route)
            .await
            .map(drop)
            .step(|| format!("delete host route {ip}")),
    );

    if let Some(vlan) = addr.vlan {
        let link = vlan_link_name(vlan);
        note(
            host.delete_link_by_name(&link)
                .await
                .map(drop)
                .step(|| format!("delete {link}")),
        );
        let iif = Rule {
            table: BRANCH_TABLE_BASE + vlan,
            priority: Some(BRANCH_IIF_RULE_PRIORITY),
            ..Rule::default()
        };
        let step = || format!("delete iif rules of table {}", BRANCH_TABLE_BASE + vlan);
        note(host.delete_rules(&iif).await.map(drop).step(step));
    }
    errors
}

/// Deletes the pod's interface inside its namespace (its host peer goes with it); Ok(false)
/// when it is not there.
pub async fn delete_pod_link(pod: &Netlink, ifname: &str) -> Result<bool, PlumbingError> {
    pod.delete_link_by_name(ifname)
        .await
        .step(|| format!("delete pod {ifname}"))
}
