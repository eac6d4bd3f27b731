//! Reading this plugin's attachment back out of a prevResult, in its own layout or in the
//! one aws-node writes (container interface `mac` = route table id).

use std::net::Ipv4Addr;

use ipnet::IpNet;

use crate::cni::result::{CniResult, Interface};
use crate::names::{vlan_link_name, RECORD_PREFIX};
use crate::netlink::{MacAddr, RT_TABLE_MAIN};
use crate::plumbing::branch::record_vlan;

/// What a prevResult says about one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub host_veth: Option<Interface>,
    pub container: Interface,
    pub ips: Vec<Ipv4Addr>,
    /// The ENI route table, when the result tells it.
    pub table: Option<u32>,
    /// Set for a branch-ENI pod.
    pub vlan: Option<u16>,
    /// Why the record's VLAN id could not be read, when it could not.
    pub vlan_error: Option<String>,
    /// A branch-ENI pod's VLAN link, listed with the branch ENI's MAC.
    pub vlan_link: Option<Interface>,
    /// The gateway of the first address (a branch-ENI pod's subnet gateway).
    pub gateway: Option<Ipv4Addr>,
}

impl Recorded {
    /// Finds the interface named `ifname` with a sandbox (or, failing that, any interface of
    /// that name) and what belongs to it. None when the result has no such interface.
    pub fn find(result: &CniResult, ifname: &str) -> Option<Recorded> {
        let ifaces = &result.interfaces;
        let index = ifaces
            .iter()
            .position(|i| i.name == ifname && !i.sandbox.is_empty())
            .or_else(|| ifaces.iter().position(|i| i.name == ifname))?;
        let container = ifaces[index].clone();
        let record = ifaces.iter().find(|i| i.name.starts_with(RECORD_PREFIX));
        let (vlan, vlan_error) = match record.map(|r| record_vlan(&r.mac)) {
            None => (None, None),
            Some(Ok(vlan)) => (vlan, None),
            Some(Err(e)) => (None, Some(format!("record {}: {e}", record?.name))),
        };
        let vlan_link = vlan.and_then(|v| {
            let name = vlan_link_name(v);
            ifaces.iter().find(|i| i.name == name).cloned()
        });
        Some(Recorded {
            host_veth: host_interface(ifaces, index).cloned(),
            table: table_of(&container, record),
            ips: ips_of(result, index),
            gateway: gateway_of(result, index),
            container,
            vlan,
            vlan_error,
            vlan_link,
        })
    }

    /// The branch ENI's MAC, as the result lists it on the VLAN link.
    pub fn eni_mac(&self) -> Option<MacAddr> {
        self.vlan_link.as_ref().and_then(|l| l.mac.parse().ok())
    }

    pub fn host_mac(&self) -> Option<MacAddr> {
        self.host_veth.as_ref().and_then(|h| h.mac.parse().ok())
    }

    pub fn container_mac(&self) -> Option<MacAddr> {
        self.container.mac.parse().ok()
    }
}

fn gateway_of(result: &CniResult, index: usize) -> Option<Ipv4Addr> {
    result
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index) || ip.interface.is_none())
        .find_map(|ip| match ip.gateway {
            Some(std::net::IpAddr::V4(gw)) => Some(gw),
            _ => None,
        })
}

/// aws-node lists the host veth right before the container interface; otherwise take the
/// first host-side (no sandbox) interface that is neither the record nor a VLAN link.
fn host_interface(ifaces: &[Interface], container: usize) -> Option<&Interface> {
    let is_host = |i: &&Interface| {
        i.sandbox.is_empty() && !i.name.starts_with(RECORD_PREFIX) && !i.name.starts_with("vlan.")
    };
    container
        .checked_sub(1)
        .and_then(|prev| ifaces.get(prev))
        .filter(is_host)
        .or_else(|| ifaces.iter().find(is_host))
}

/// IPv4 addresses of the interface; addresses without an interface index count as its own
/// when the result has no indexed ones (hand-made or minimal results).
fn ips_of(result: &CniResult, index: usize) -> Vec<Ipv4Addr> {
    let v4 = |a: &IpNet| match a {
        IpNet::V4(n) => Some(n.addr()),
        IpNet::V6(_) => None,
    };
    let indexed: Vec<_> = result
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .filter_map(|ip| v4(&ip.address))
        .collect();
    if !indexed.is_empty() {
        return indexed;
    }
    result
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none())
        .filter_map(|ip| v4(&ip.address))
        .collect()
}

/// aws-node ≥ 1.20 stores the table as the container interface's "mac"; ours holds the real
/// MAC and the record's sandbox holds the ENI device number (table = 254 for device 0, else
/// device + 1). Table 1 in the old encoding meant main.
fn table_of(container: &Interface, record: Option<&Interface>) -> Option<u32> {
    if let Ok(table) = container.mac.parse::<u32>() {
        return Some(if table == 1 { RT_TABLE_MAIN } else { table });
    }
    let device = record?.sandbox.parse::<u32>().ok()?;
    Some(if device == 0 {
        RT_TABLE_MAIN
    } else {
        device + 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::Version;
    use serde_json::json;

    fn decode(v: serde_json::Value) -> CniResult {
        CniResult::decode(&v, Version::new(1, 0, 0)).unwrap().0
    }

    #[test]
    fn reads_our_layout() {
        let r = decode(json!({"cniVersion": "1.0.0", "interfaces": [
            {"name": "eniabc", "mac": "02:00:00:00:00:01"},
            {"name": "eth0", "mac": "0a:00:00:00:00:02", "sandbox": "/var/run/netns/p"},
            {"name": "dummyabc", "mac": "0", "sandbox": "2"}],
            "ips": [{"address": "10.0.0.21/32", "interface": 1}]}));
        let rec = Recorded::find(&r, "eth0").unwrap();
        assert_eq!(rec.host_veth.as_ref().unwrap().name, "eniabc");
        assert_eq!(rec.host_mac(), Some("02:00:00:00:00:01".parse().unwrap()));
        assert_eq!(rec.ips, ["10.0.0.21".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(rec.table, Some(3));
        assert_eq!(rec.vlan, None);
        assert_eq!(rec.vlan_error, None);
    }

    #[test]
    fn reads_aws_node_layout() {
        let r = decode(json!({"cniVersion": "0.4.0", "interfaces": [
            {"name": "eniabc"},
            {"name": "eth0", "mac": "2", "sandbox": "/var/run/netns/p"},
            {"name": "dummyabc", "mac": "0", "sandbox": "1"}],
            "ips": [{"version": "4", "address": "10.0.0.5/32", "interface": 1}]}));
        let rec = Recorded::find(&r, "eth0").unwrap();
        assert_eq!(rec.table, Some(2));
        assert_eq!(rec.container_mac(), None);
        let legacy = decode(json!({"cniVersion": "1.0.0", "interfaces": [
            {"name": "eth0", "mac": "1", "sandbox": "/p"}], "ips": []}));
        assert_eq!(Recorded::find(&legacy, "eth0").unwrap().table, Some(254));
    }

    #[test]
    fn branch_pod_record_carries_the_vlan() {
        let r = decode(json!({"cniVersion": "1.0.0", "interfaces": [
            {"name": "vlanabc"}, {"name": "eth0", "mac": "0", "sandbox": "/p"},
            {"name": "dummyabc", "mac": "3"}],
            "ips": [{"address": "10.0.1.10/32", "interface": 1, "gateway": "10.0.1.1"}]}));
        let rec = Recorded::find(&r, "eth0").unwrap();
        assert_eq!(rec.vlan, Some(3));
        assert_eq!(rec.gateway, Some("10.0.1.1".parse().unwrap()));
        assert_eq!(rec.eni_mac(), None, "aws-node does not list the vlan link");
        assert_eq!(rec.host_veth.unwrap().name, "vlanabc");
    }

    #[test]
    fn our_branch_pod_layout_lists_the_vlan_link() {
        let r = decode(json!({"cniVersion": "1.0.0", "interfaces": [
            {"name": "eniabc", "mac": "02:00:00:00:00:01"},
            {"name": "eth0", "mac": "0a:00:00:00:00:02", "sandbox": "/p"},
            {"name": "dummyabc", "mac": "7"},
            {"name": "vlan.eth.7", "mac": "02:00:00:00:00:b1"}],
            "ips": [{"address": "10.0.1.10/32", "interface": 1, "gateway": "10.0.1.1"}]}));
        let rec = Recorded::find(&r, "eth0").unwrap();
        assert_eq!(rec.vlan, Some(7));
        assert_eq!(rec.eni_mac(), Some("02:00:00:00:00:b1".parse().unwrap()));
        assert_eq!(rec.host_veth.unwrap().name, "eniabc");
        assert_eq!(rec.table, None, "a branch record has no ENI device number");
    }

    #[test]
    fn malformed_vlan_in_the_record_is_reported() {
        for mac in ["x", "4095", "-3"] {
            let r = decode(json!({"cniVersion": "1.0.0", "interfaces": [
                {"name": "eth0", "sandbox": "/p"}, {"name": "dummyabc", "mac": mac}],
                "ips": []}));
            let rec = Recorded::find(&r, "eth0").unwrap();
            assert_eq!(rec.vlan, None, "{mac}");
            assert!(
                rec.vlan_error
                    .unwrap()
                    .starts_with("record dummyabc: vlan id"),
                "{mac}"
            );
        }
    }

    #[test]
    fn other_interface_name_is_not_ours() {
        let r = decode(
            json!({"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "sandbox": "/p"}],
                              "ips": []}),
        );
        assert!(Recorded::find(&r, "eth0").is_none());
    }
}
