//! ENI plumbing on the node and reading back pod plumbing, all over netlink in ipamd's own
//! network namespace. Routes, rules and tables are numbered as aws-node numbers them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use thiserror::Error;
use vpc_cni::netlink::{Link, MacAddr, Netlink, NetlinkError, Route, Rule, RT_TABLE_MAIN};

use crate::datastore::EniInfo;
use crate::names;

/// `from <ENI primary IP> lookup <ENI table>`, one per secondary ENI.
pub const ENI_RULE_PRIORITY: u32 = 32765;
/// `to <pod IP> lookup main`, one per pod.
pub const TO_POD_RULE_PRIORITY: u32 = 512;
/// `from <pod IP> lookup <ENI table>`, for pods on secondary ENIs.
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;
/// Where strict security-group enforcement moves `lookup local`: after the prio-10 rules that
/// send a branch pod's traffic to its VLAN, so even node-local traffic leaves through it.
pub const LOCAL_RULE_PRIORITY: u32 = 20;
/// The kernel's local table and the priority of its default rule.
const RT_TABLE_LOCAL: u32 = 255;
const DEFAULT_LOCAL_RULE_PRIORITY: u32 = 0;

#[derive(Debug, Error)]
pub enum HostError {
    #[error("eni {eni}: no link with mac {mac} after {attempts} tries")]
    LinkNotFound {
        eni: String,
        mac: String,
        attempts: u32,
    },
    #[error("eni {eni}: mac {mac:?} is not a mac address")]
    BadMac { eni: String, mac: String },
    #[error("eni {eni}: {source}")]
    Eni { eni: String, source: NetlinkError },
    #[error("pod address {ip}: {source}")]
    Pod { ip: Ipv4Addr, source: NetlinkError },
    #[error("read host state: {0}")]
    Read(NetlinkError),
    #[error("move the local table rule to priority {LOCAL_RULE_PRIORITY}: {0}")]
    LocalRule(NetlinkError),
}

/// How long to wait for an attached ENI's link to show up (the kernel adds it a moment after
/// EC2 reports the attachment).
#[derive(Debug, Clone, Copy)]
pub struct LinkWait {
    pub attempts: u32,
    pub interval: Duration,
}

impl Default for LinkWait {
    fn default() -> Self {
        LinkWait {
            attempts: 10,
            interval: Duration::from_millis(500),
        }
    }
}

/// What the plugin left on the node for running pods, as netlink shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodHostState {
    /// Names of all links; a pod is alive while a link name ends in its hash.
    pub link_names: Vec<String>,
    /// Main-table /32 routes out a host veth with the configured prefix.
    pub routes: Vec<PodRoute>,
    /// Pod addresses that have a prio-512 or prio-1536 rule.
    pub rule_ips: BTreeSet<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    pub ip: Ipv4Addr,
    pub veth: String,
    pub hash: String,
}

impl PodHostState {
    /// Whether a link whose name ends in this pod hash exists (any prefix: strict-mode
    /// branch pods use "vlan" instead of the configured one).
    pub fn has_veth_for(&self, hash: &str) -> bool {
        self.link_names
            .iter()
            .any(|n| n.len() > hash.len() && n.ends_with(hash))
    }
}

pub struct Host {
    nl: Netlink,
    mtu: u32,
    wait: LinkWait,
}

impl Host {
    pub fn new(nl: Netlink, mtu: u32, wait: LinkWait) -> Self {
        Host { nl, mtu, wait }
    }

    /// Waits for the link with this MAC to appear.
    async fn find_link(&self, eni: &str, mac: &str) -> Result<Link, HostError> {
        let parsed: MacAddr = mac.parse().map_err(|_| HostError::BadMac {
            eni: eni.into(),
            mac: mac.into(),
        })?;
        for attempt in 1..=self.wait.attempts {
            let found = self
                .nl
                .link_by_mac(parsed)
                .await
                .map_err(|source| HostError::Eni {
                    eni: eni.into(),
                    source,
                })?;
            if let Some(link) = found {
                return Ok(link);
            }
            tracing::debug!(eni, mac, attempt, "eni link not there yet");
            tokio::time::sleep(self.wait.interval).await;
        }
        Err(HostError::LinkNotFound {
            eni: eni.into(),
            mac: mac.into(),
            attempts: self.wait.attempts,
        })
    }

    /// The primary ENI only gets its MTU; its addresses and routes belong to the node.
    pub async fn setup_primary_eni(&self, eni: &EniInfo) -> Result<(), HostError> {
        let link = self.find_link(&eni.id, &eni.mac).await?;
        if link.mtu != self.mtu {
            let wrap = |source| HostError::Eni {
                eni: eni.id.clone(),
                source,
            };
            self.nl
                .set_link_mtu(link.index, self.mtu)
                .await
                .map_err(wrap)?;
        }
        Ok(())
    }

    /// MTU, up, primary address, table device+1 with the subnet gateway, rule 32765, and no
    /// subnet route in main (traffic from the ENI's address must use its own table).
    pub async fn setup_secondary_eni(&self, eni: &EniInfo) -> Result<(), HostError> {
        self.setup_eni(eni, true).await
    }

    /// A trunk ENI is set up like a secondary ENI but without rule 32765: nothing on the node
    /// sends from its address, and its branches' traffic is routed by VLAN, not by source.
    pub async fn setup_trunk_eni(&self, eni: &EniInfo) -> Result<(), HostError> {
        self.setup_eni(eni, false).await
    }

    /// The ifindex of the link with this MAC right now, without waiting for it.
    pub async fn link_index_by_mac(&self, eni: &str, mac: &str) -> Result<Option<u32>, HostError> {
        let parsed: MacAddr = mac.parse().map_err(|_| HostError::BadMac {
            eni: eni.into(),
            mac: mac.into(),
        })?;
        let link = self.nl.link_by_mac(parsed).await.map_err(HostError::Read)?;
        Ok(link.map(|l| l.index))
    }

    async fn setup_eni(&self, eni: &EniInfo, source_rule: bool) -> Result<(), HostError> {
        let link = self.find_link(&eni.id, &eni.mac).await?;
        let wrap = |source| HostError::Eni {
            eni: eni.id.clone(),
            source,
        };
        self.nl
            .set_link_mtu(link.index, self.mtu)
            .await
            .map_err(wrap)?;
        self.nl.set_link_up(link.index).await.map_err(wrap)?;
        self.set_only_address(&link, eni).await.map_err(wrap)?;
        self.program_table(&link, eni).await.map_err(wrap)?;
        self.drop_subnet_route(&link, eni).await.map_err(wrap)?;
        if source_rule {
            self.set_eni_rule(eni).await.map_err(wrap)?;
        }
        tracing::info!(eni = %eni.id, link = %link.name, table = eni.route_table(), "eni plumbed");
        Ok(())
    }

    /// `ip rule add prio 20 lookup local; ip rule del prio 0 lookup local`, in that order so
    /// the node is never without a local rule; a second run changes nothing. Returns whether
    /// anything changed.
    pub async fn move_local_rule(&self) -> Result<bool, HostError> {
        let local_at = |priority| Rule {
            priority: Some(priority),
            table: RT_TABLE_LOCAL,
            ..Rule::default()
        };
        let moved = local_at(LOCAL_RULE_PRIORITY);
        let rules = self.nl.rules(false).await.map_err(HostError::LocalRule)?;
        let mut changed = false;
        if !rules.iter().any(|r| is_plain_local(r, LOCAL_RULE_PRIORITY)) {
            self.nl
                .add_rule(&moved)
                .await
                .map_err(HostError::LocalRule)?;
            changed = true;
        }
        if rules
            .iter()
            .any(|r| is_plain_local(r, DEFAULT_LOCAL_RULE_PRIORITY))
        {
            let default = local_at(DEFAULT_LOCAL_RULE_PRIORITY);
            changed |= self
                .nl
                .delete_rule(&default)
                .await
                .map_err(HostError::LocalRule)?;
        }
        Ok(changed)
    }

    /// `ip addr flush dev ethN; ip addr add <primary IP>/<subnet len> dev ethN`, leaving
    /// IPv6 link-local addresses alone.
    async fn set_only_address(&self, link: &Link, eni: &EniInfo) -> Result<(), NetlinkError> {
        let want =
            IpNet::V4(Ipv4Net::new(eni.primary_ip, eni.subnet.prefix_len()).expect("prefix"));
        for addr in self.nl.addresses_of(link.index).await? {
            let link_local_v6 =
                matches!(addr.address, IpNet::V6(v6) if v6.addr().segments()[0] & 0xffc0 == 0xfe80);
            if addr.address != want && !link_local_v6 {
                self.nl.delete_address(link.index, addr.address).await?;
            }
        }
        self.nl.add_address(link.index, want).await
    }

    /// `ip route replace <gw>/32 dev ethN scope link table T` and
    /// `ip route replace default via <gw> dev ethN table T`, after clearing whatever an
    /// earlier ENI at the same device index left in T.
    async fn program_table(&self, link: &Link, eni: &EniInfo) -> Result<(), NetlinkError> {
        let table = eni.route_table();
        let gw = gateway(&eni.subnet);
        for old in self.nl.routes_in_table(table, false).await? {
            if old.oif != Some(link.index) {
                self.nl.delete_route(&old).await?;
            }
        }
        let gw_net = IpNet::V4(Ipv4Net::from(gw));
        self.nl
            .replace_route(&Route::link_scope(gw_net, link.index, table))
            .await?;
        let default = IpNet::V4(Ipv4Net::default());
        self.nl
            .replace_route(&Route::via(default, IpAddr::V4(gw), link.index, table))
            .await
    }

    /// The kernel adds `<subnet> dev ethN proto kernel scope link src <ENI IP>` to main with
    /// the address; it would send pod replies out the wrong ENI.
    async fn drop_subnet_route(&self, link: &Link, eni: &EniInfo) -> Result<(), NetlinkError> {
        let subnet = IpNet::V4(eni.subnet.trunc());
        let route = Route::link_scope(subnet, link.index, RT_TABLE_MAIN);
        self.nl.delete_route(&route).await.map(|_| ())
    }

    /// `ip rule add prio 32765 from <ENI IP> lookup T`, replacing a rule for the same
    /// address that points at another table.
    async fn set_eni_rule(&self, eni: &EniInfo) -> Result<(), NetlinkError> {
        let table = eni.route_table();
        let source = IpNet::V4(Ipv4Net::from(eni.primary_ip));
        for rule in self.nl.rules(false).await? {
            if rule.priority == Some(ENI_RULE_PRIORITY)
                && rule.source == Some(source)
                && rule.table != table
            {
                self.nl.delete_rule(&rule).await?;
            }
        }
        self.nl
            .add_rule(&Rule::from(source, table).priority(ENI_RULE_PRIORITY))
            .await
    }

    /// Undoes [`Self::setup_secondary_eni`] for a detached ENI. The kernel already dropped
    /// the link's routes with the link; the rule and any route left in its table go here.
    pub async fn teardown_eni(&self, eni: &EniInfo) -> Result<(), HostError> {
        let wrap = |source| HostError::Eni {
            eni: eni.id.clone(),
            source,
        };
        let source = IpNet::V4(Ipv4Net::from(eni.primary_ip));
        let rule = Rule::from(source, eni.route_table()).priority(ENI_RULE_PRIORITY);
        self.nl.delete_rules(&rule).await.map_err(wrap)?;
        for route in self
            .nl
            .routes_in_table(eni.route_table(), false)
            .await
            .map_err(wrap)?
        {
            self.nl.delete_route(&route).await.map_err(wrap)?;
        }
        Ok(())
    }

    /// Reads the links, main-table pod routes and pod rules.
    pub async fn pod_state(&self, veth_prefix: &str) -> Result<PodHostState, HostError> {
        let links = self.nl.links().await.map_err(HostError::Read)?;
        let routes = self
            .nl
            .routes_in_table(RT_TABLE_MAIN, false)
            .await
            .map_err(HostError::Read)?;
        let rules = self.nl.rules(false).await.map_err(HostError::Read)?;

        let pod_routes = routes.iter().filter_map(|r| {
            let IpNet::V4(dst) = r.destination else {
                return None;
            };
            let link = links.iter().find(|l| Some(l.index) == r.oif)?;
            let hash = names::veth_hash(&link.name, veth_prefix)?;
            (dst.prefix_len() == 32).then(|| PodRoute {
                ip: dst.addr(),
                veth: link.name.clone(),
                hash: hash.into(),
            })
        });
        Ok(PodHostState {
            link_names: links.iter().map(|l| l.name.clone()).collect(),
            routes: pod_routes.collect(),
            rule_ips: rules.iter().filter_map(pod_rule_ip).collect(),
        })
    }

    /// Removes the prio-512 "to" rule and every prio-1536 "from" rule of a pod address
    /// whose pod is gone.
    pub async fn remove_pod_rules(&self, ip: Ipv4Addr) -> Result<usize, HostError> {
        let wrap = |source| HostError::Pod { ip, source };
        let net = IpNet::V4(Ipv4Net::from(ip));
        let to = Rule::to(net, RT_TABLE_MAIN).priority(TO_POD_RULE_PRIORITY);
        let from = Rule::from(net, 0).priority(FROM_POD_RULE_PRIORITY);
        let removed = self.nl.delete_rules(&to).await.map_err(wrap)?;
        Ok(removed + self.nl.delete_rules(&from).await.map_err(wrap)?)
    }
}

/// `from all lookup local` at `priority`, with no selector.
fn is_plain_local(rule: &Rule, priority: u32) -> bool {
    rule.priority == Some(priority)
        && rule.table == RT_TABLE_LOCAL
        && rule.source.is_none()
        && rule.destination.is_none()
        && rule.iif.is_none()
        && rule.fwmark.is_none()
}

/// The pod address of a prio-512 `to IP/32` or prio-1536 `from IP/32` rule.
fn pod_rule_ip(rule: &Rule) -> Option<Ipv4Addr> {
    let net = match rule.priority? {
        TO_POD_RULE_PRIORITY => rule.destination?,
        FROM_POD_RULE_PRIORITY => rule.source?,
        _ => return None,
    };
    match net {
        IpNet::V4(v4) if v4.prefix_len() == 32 => Some(v4.addr()),
        _ => None,
    }
}

/// The VPC router: the subnet's network address + 1.
pub fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_network_plus_one() {
        assert_eq!(
            gateway(&"10.0.32.0/19".parse().unwrap()),
            Ipv4Addr::new(10, 0, 32, 1)
        );
        assert_eq!(
            gateway(&"10.0.0.77/24".parse().unwrap()),
            Ipv4Addr::new(10, 0, 0, 1)
        );
    }

    #[test]
    fn pod_rules_are_recognised_by_priority_and_host_prefix() {
        let ip: IpNet = "10.0.0.24/32".parse().unwrap();
        assert_eq!(
            pod_rule_ip(&Rule::to(ip, 254).priority(512)),
            Some(Ipv4Addr::new(10, 0, 0, 24))
        );
        assert_eq!(
            pod_rule_ip(&Rule::from(ip, 2).priority(1536)),
            Some(Ipv4Addr::new(10, 0, 0, 24))
        );
        assert_eq!(pod_rule_ip(&Rule::from(ip, 2).priority(32765)), None);
        assert_eq!(
            pod_rule_ip(&Rule::to("10.0.0.0/16".parse().unwrap(), 254).priority(512)),
            None
        );
    }

    #[test]
    fn a_veth_with_any_prefix_keeps_its_pod_alive() {
        let state = PodHostState {
            link_names: vec!["lo".into(), "vlan0123456789a".into()],
            ..Default::default()
        };
        assert!(state.has_veth_for("0123456789a"));
        assert!(!state.has_veth_for("fffffffffff"));
    }
}
