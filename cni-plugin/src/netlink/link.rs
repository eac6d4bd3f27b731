//! Links: look up by name, index or MAC; create veth pairs; set up, MTU, namespace; delete.

use std::fmt;
use std::os::fd::AsRawFd;
use std::str::FromStr;

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVlan};

use super::{gone_ok, Netlink, NetlinkError, Netns};

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random unicast, locally administered address (IEEE 802: bit 0 of the first octet
    /// clear = unicast, bit 1 set = not vendor-assigned).
    pub fn random_local() -> MacAddr {
        let mut bytes: [u8; 6] = rand::random();
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        MacAddr(bytes)
    }

    fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mac address {0:?}")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacParseError(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

/// What `ip -d link show` tells about a link, reduced to what the plugin and ipamd use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// "veth", "macvlan", ...; None for links without rtnl_link_ops (physical, lo).
    pub kind: Option<String>,
    /// IFLA_LINK: a veth's peer (its index in the peer's namespace), a VLAN link's parent.
    pub link_index: Option<u32>,
    /// The 802.1Q id of a VLAN link.
    pub vlan_id: Option<u16>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
            link_index: None,
            vlan_id: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(bytes),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Link(index) => link.link_index = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = kind_of(infos);
                    link.vlan_id = vlan_id_of(infos);
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_of(infos: &[LinkInfo]) -> Option<String> {
    infos.iter().find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind.to_string()),
        _ => None,
    })
}

fn vlan_id_of(infos: &[LinkInfo]) -> Option<u16> {
    infos.iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Vlan(data)) => data.iter().find_map(|d| match d {
            InfoVlan::Id(id) => Some(*id),
            _ => None,
        }),
        _ => None,
    })
}

/// A veth pair created in one request: `name` here, `peer_name` directly in `peer_netns`.
#[derive(Debug)]
pub struct VethPair<'a> {
    pub name: &'a str,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub peer_name: &'a str,
    pub peer_netns: &'a Netns,
}

/// An 802.1Q sub-interface of `parent`, with its own MAC.
#[derive(Debug, Clone, Copy)]
pub struct VlanLink<'a> {
    pub name: &'a str,
    pub parent: u32,
    pub id: u16,
    pub mac: MacAddr,
}

impl Netlink {
    /// `ip link show`
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let req = RouteNetlinkMessage::GetLink(LinkMessage::default());
        let replies = self.dump(|| "list links".into(), req).await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })
            .collect())
    }

    /// `ip link show dev NAME`
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let msg = LinkUnspec::new_with_name(name).build();
        let op = || format!("get link {name}");
        self.get_link(op, msg).await
    }

    /// `ip link show` filtered to one ifindex
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).build();
        let op = || format!("get link #{index}");
        self.get_link(op, msg).await
    }

    /// `ip -br link | grep MAC`: ENIs are identified by MAC, their names are the kernel's choice.
    pub async fn link_by_mac(&self, mac: MacAddr) -> Result<Option<Link>, NetlinkError> {
        Ok(self.links().await?.into_iter().find(|l| l.mac == Some(mac)))
    }

    async fn get_link(
        &self,
        op: impl Fn() -> String,
        msg: LinkMessage,
    ) -> Result<Option<Link>, NetlinkError> {
        match self.get_one(&op, RouteNetlinkMessage::GetLink(msg)).await? {
            Some(RouteNetlinkMessage::NewLink(link)) => Ok(Some(Link::from_message(&link))),
            Some(_) => Err(NetlinkError::Unexpected { op: op() }),
            None => Ok(None),
        }
    }

    /// `ip link add NAME [address MAC] mtu MTU type veth peer name PEER mtu MTU netns NS`
    ///
    /// Creating the peer directly in its namespace saves a later move, which in the kernel
    /// waits for an RCU grace period.
    pub async fn create_veth(&self, pair: &VethPair<'_>) -> Result<(), NetlinkError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pair.peer_name)
            .mtu(pair.mtu)
            .setns_by_fd(pair.peer_netns.file().as_raw_fd())
            .build();
        let mut builder = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(pair.name)
            .mtu(pair.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
        if let Some(mac) = pair.mac {
            builder = builder.address(mac.0.to_vec());
        }
        let op = || format!("create veth {} (peer {})", pair.name, pair.peer_name);
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(op, RouteNetlinkMessage::NewLink(builder.build()), flags)
            .await
    }

    /// `ip link add link PARENT name NAME address MAC type vlan id ID` (created down)
    pub async fn create_vlan(&self, vlan: &VlanLink<'_>) -> Result<(), NetlinkError> {
        let msg = LinkVlan::new(vlan.name, vlan.parent, vlan.id)
            .address(vlan.mac.0.to_vec())
            .build();
        let op = || {
            format!(
                "create vlan {} (id {}, parent #{})",
                vlan.name, vlan.id, vlan.parent
            )
        };
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(op, RouteNetlinkMessage::NewLink(msg), flags)
            .await
    }

    /// `ip link set dev X up`
    pub async fn set_link_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.request(
            || format!("set link #{index} up"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .await
    }

    /// `ip link set dev X down`
    pub async fn set_link_down(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).down().build();
        let op = || format!("set link #{index} down");
        self.request(op, RouteNetlinkMessage::SetLink(msg), 0).await
    }

    /// `ip link set dev X mtu MTU`
    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        let op = || format!("set link #{index} mtu {mtu}");
        self.request(op, RouteNetlinkMessage::SetLink(msg), 0).await
    }

    /// `ip link set dev X netns NS`
    pub async fn set_link_netns(&self, index: u32, netns: &Netns) -> Result<(), NetlinkError> {
        let fd = netns.file().as_raw_fd();
        let msg = LinkUnspec::new_with_index(index).setns_by_fd(fd).build();
        let op = || format!("move link #{index} to netns {}", netns.path().display());
        self.request(op, RouteNetlinkMessage::SetLink(msg), 0).await
    }

    /// `ip link del dev X`; Ok(false) when there was no such link.
    pub async fn delete_link(&self, index: u32) -> Result<bool, NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).build();
        let op = || format!("delete link #{index}");
        gone_ok(self.request(op, RouteNetlinkMessage::DelLink(msg), 0).await)
    }

    /// `ip link del dev NAME`; Ok(false) when there was no such link.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool, NetlinkError> {
        let msg = LinkUnspec::new_with_name(name).build();
        let op = || format!("delete link {name}");
        gone_ok(self.request(op, RouteNetlinkMessage::DelLink(msg), 0).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac: MacAddr = "0a:58:AC:00:00:01".parse().unwrap();
        assert_eq!(mac.to_string(), "0a:58:ac:00:00:01");
        for bad in [
            "",
            "0a:58:ac:00:00",
            "0a:58:ac:00:00:01:02",
            "0a:58:ac:00:00:zz",
            "0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_mac_is_local_unicast() {
        for _ in 0..100 {
            let mac = MacAddr::random_local();
            assert_eq!(mac.0[0] & 0x01, 0, "multicast bit set in {mac}");
            assert_eq!(mac.0[0] & 0x02, 0x02, "local bit clear in {mac}");
        }
    }
}
