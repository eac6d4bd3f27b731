//! Neighbour (ARP/NDP) entries.

use std::net::IpAddr;

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState as NlState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::addr::family;
use super::{gone_ok, MacAddr, Netlink, NetlinkError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourState {
    Permanent,
    Reachable,
    Stale,
    Noarp,
    Failed,
    Other(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    pub state: NeighbourState,
}

impl Neighbour {
    fn from_message(msg: &NeighbourMessage) -> Option<Neighbour> {
        let mut ip = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    ip = Some((*v4).into())
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    ip = Some((*v6).into())
                }
                NeighbourAttribute::LinkLayerAddress(b) => mac = <[u8; 6]>::try_from(&b[..]).ok(),
                _ => {}
            }
        }
        Some(Neighbour {
            index: msg.header.ifindex,
            ip: ip?,
            mac: mac.map(MacAddr),
            state: state_from(msg.header.state),
        })
    }
}

fn state_from(state: NlState) -> NeighbourState {
    match state {
        NlState::Permanent => NeighbourState::Permanent,
        NlState::Reachable => NeighbourState::Reachable,
        NlState::Stale => NeighbourState::Stale,
        NlState::Noarp => NeighbourState::Noarp,
        NlState::Failed => NeighbourState::Failed,
        other => NeighbourState::Other(other.into()),
    }
}

fn message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(ip);
    msg.header.ifindex = index;
    let dst = match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    };
    msg.attributes.push(NeighbourAttribute::Destination(dst));
    msg
}

impl Netlink {
    /// `ip [-6] neigh show`
    pub async fn neighbours(&self, v6: bool) -> Result<Vec<Neighbour>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let req = RouteNetlinkMessage::GetNeighbour(msg);
        let replies = self.dump(|| "list neighbours".into(), req).await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Neighbour::from_message(n),
                _ => None,
            })
            .collect())
    }

    /// `ip neigh replace IP lladdr MAC dev X nud permanent`
    pub async fn replace_permanent_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        let mut msg = message(index, ip);
        msg.header.state = NlState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        let op = || format!("set neighbour {ip} lladdr {mac} on link #{index}");
        let req = RouteNetlinkMessage::NewNeighbour(msg);
        self.request(op, req, NLM_F_CREATE | NLM_F_REPLACE).await
    }

    /// `ip neigh del IP dev X`; Ok(false) when there was no entry.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<bool, NetlinkError> {
        let req = RouteNetlinkMessage::DelNeighbour(message(index, ip));
        let op = || format!("delete neighbour {ip} on link #{index}");
        gone_ok(self.request(op, req, 0).await)
    }
}
