//! Interface addresses.

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{exists_ok, gone_ok, Netlink, NetlinkError};

/// One address as `ip addr show` lists it: the address with its prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub address: IpNet,
    /// RT_SCOPE_* number: 0 global, 253 link, 254 host.
    pub scope: u8,
}

impl Address {
    fn from_message(msg: &AddressMessage) -> Option<Address> {
        let prefix = msg.header.prefix_len;
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
        // point-to-point links, so prefer LOCAL when both are present.
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = local.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })?;
        Some(Address {
            index: msg.header.index,
            address: IpNet::new(address, prefix).ok()?,
            scope: msg.header.scope.into(),
        })
    }
}

fn message(index: u32, address: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(address.addr());
    msg.header.prefix_len = address.prefix_len();
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    msg.attributes
        .push(AddressAttribute::Address(address.addr()));
    if address.addr().is_ipv4() {
        msg.attributes.push(AddressAttribute::Local(address.addr()));
    }
    msg
}

pub(super) fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

impl Netlink {
    /// `ip addr show`
    pub async fn addresses(&self) -> Result<Vec<Address>, NetlinkError> {
        let req = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let replies = self.dump(|| "list addresses".into(), req).await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Address::from_message(a),
                _ => None,
            })
            .collect())
    }

    /// `ip addr show dev X`
    pub async fn addresses_of(&self, index: u32) -> Result<Vec<Address>, NetlinkError> {
        let all = self.addresses().await?;
        Ok(all.into_iter().filter(|a| a.index == index).collect())
    }

    /// `ip addr add ADDR/PREFIX dev X`; an identical address already there is success.
    pub async fn add_address(&self, index: u32, address: IpNet) -> Result<(), NetlinkError> {
        let req = RouteNetlinkMessage::NewAddress(message(index, address));
        let op = || format!("add address {address} to link #{index}");
        let flags = rtnetlink::packet_core::NLM_F_CREATE | rtnetlink::packet_core::NLM_F_EXCL;
        exists_ok(self.request(op, req, flags).await)
    }

    /// `ip addr del ADDR/PREFIX dev X`; Ok(false) when it was not there.
    pub async fn delete_address(&self, index: u32, address: IpNet) -> Result<bool, NetlinkError> {
        let req = RouteNetlinkMessage::DelAddress(message(index, address));
        let op = || format!("delete address {address} from link #{index}");
        gone_ok(self.request(op, req, 0).await)
    }
}
