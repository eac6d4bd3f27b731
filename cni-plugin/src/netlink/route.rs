//! Routes in any table.

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope as NlScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::addr::family;
use super::{gone_ok, Netlink, NetlinkError};

/// The main table (`ip route` without `table`).
pub const RT_TABLE_MAIN: u32 = 254;
/// Header value meaning "see RTA_TABLE" for table ids that do not fit in a byte.
const RT_TABLE_COMPAT: u8 = 252;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteScope {
    Universe,
    Link,
    Host,
    Other(u8),
}

/// One route. `destination` 0.0.0.0/0 is the default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
    /// Preferred source (`src` in `ip route`).
    pub source: Option<IpAddr>,
    /// Metric (`metric` in `ip route`).
    pub priority: Option<u32>,
    /// RTPROT_*: 2 kernel, 3 boot (the default for routes added by hand).
    pub protocol: u8,
    /// RTN_*: 1 unicast, 2 local, 3 broadcast, ...
    pub kind: u8,
}

impl Route {
    /// `DST dev OIF scope link table TABLE`
    pub fn link_scope(destination: IpNet, oif: u32, table: u32) -> Route {
        Route {
            table,
            destination,
            gateway: None,
            oif: Some(oif),
            scope: RouteScope::Link,
            source: None,
            priority: None,
            protocol: u8::from(RouteProtocol::Boot),
            kind: u8::from(RouteType::Unicast),
        }
    }

    /// `DST via GW dev OIF table TABLE`
    pub fn via(destination: IpNet, gateway: IpAddr, oif: u32, table: u32) -> Route {
        Route {
            gateway: Some(gateway),
            scope: RouteScope::Universe,
            ..Route::link_scope(destination, oif, table)
        }
    }

    pub fn is_default(&self) -> bool {
        self.destination.prefix_len() == 0
    }

    fn from_message(msg: &RouteMessage) -> Option<Route> {
        let mut route = Route {
            table: u32::from(msg.header.table),
            destination: IpNet::new(unspecified(msg.header.address_family)?, 0).ok()?,
            gateway: None,
            oif: None,
            scope: scope_from(msg.header.scope),
            source: None,
            priority: None,
            protocol: msg.header.protocol.into(),
            kind: msg.header.kind.into(),
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => route.table = *t,
                RouteAttribute::Destination(a) => {
                    let prefix = msg.header.destination_prefix_length;
                    route.destination = IpNet::new(ip_of(a)?, prefix).ok()?;
                }
                RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::PrefSource(a) => route.source = ip_of(a),
                RouteAttribute::Priority(p) => route.priority = Some(*p),
                _ => {}
            }
        }
        Some(route)
    }

    fn to_message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let dst = self.destination;
        msg.header.address_family = family(dst.addr());
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = u8::try_from(self.table).unwrap_or(RT_TABLE_COMPAT);
        msg.header.protocol = self.protocol.into();
        msg.header.scope = scope_to(self.scope);
        msg.header.kind = self.kind.into();
        msg.attributes.push(RouteAttribute::Table(self.table));
        if dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(dst.addr().into()));
        }
        if let Some(gw) = self.gateway {
            msg.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = self.source {
            msg.attributes.push(RouteAttribute::PrefSource(src.into()));
        }
        if let Some(p) = self.priority {
            msg.attributes.push(RouteAttribute::Priority(p));
        }
        msg
    }

    /// A delete request matching this route: like `ip route del`, any scope, protocol and type
    /// match (RT_SCOPE_NOWHERE, 0, 0); destination, table, device and gateway must.
    fn to_delete_message(&self) -> RouteMessage {
        let mut msg = self.to_message();
        msg.header.scope = NlScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.kind = RouteType::Unspec;
        msg
    }
}

fn unspecified(family: AddressFamily) -> Option<IpAddr> {
    match family {
        AddressFamily::Inet => Some(IpAddr::from([0u8; 4])),
        AddressFamily::Inet6 => Some(IpAddr::from([0u8; 16])),
        _ => None,
    }
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn scope_from(scope: NlScope) -> RouteScope {
    match scope {
        NlScope::Universe => RouteScope::Universe,
        NlScope::Link => RouteScope::Link,
        NlScope::Host => RouteScope::Host,
        other => RouteScope::Other(other.into()),
    }
}

fn scope_to(scope: RouteScope) -> NlScope {
    match scope {
        RouteScope::Universe => NlScope::Universe,
        RouteScope::Link => NlScope::Link,
        RouteScope::Host => NlScope::Host,
        RouteScope::Other(n) => NlScope::from(n),
    }
}

fn describe(route: &Route) -> String {
    let mut s = format!("{}", route.destination);
    if let Some(gw) = route.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = route.oif {
        s += &format!(" dev #{oif}");
    }
    s + &format!(" table {}", route.table)
}

impl Netlink {
    /// `ip [-6] route show table all`
    pub async fn routes(&self, v6: bool) -> Result<Vec<Route>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self
            .dump(|| "list routes".into(), RouteNetlinkMessage::GetRoute(msg))
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .collect())
    }

    /// `ip route show table TABLE`
    pub async fn routes_in_table(&self, table: u32, v6: bool) -> Result<Vec<Route>, NetlinkError> {
        let all = self.routes(v6).await?;
        Ok(all.into_iter().filter(|r| r.table == table).collect())
    }

    /// `ip route add ...`; fails with EEXIST when the table already has this destination.
    pub async fn add_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let req = RouteNetlinkMessage::NewRoute(route.to_message());
        let op = || format!("add route {}", describe(route));
        self.request(op, req, NLM_F_CREATE | NLM_F_EXCL).await
    }

    /// `ip route replace ...`: creates the route or overwrites the one with the same
    /// destination, so a stale route from an earlier owner of the address cannot linger.
    pub async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let req = RouteNetlinkMessage::NewRoute(route.to_message());
        let op = || format!("replace route {}", describe(route));
        self.request(op, req, NLM_F_CREATE | NLM_F_REPLACE).await
    }

    /// `ip route del ...`; Ok(false) when no route matched.
    pub async fn delete_route(&self, route: &Route) -> Result<bool, NetlinkError> {
        let req = RouteNetlinkMessage::DelRoute(route.to_delete_message());
        let op = || format!("delete route {}", describe(route));
        gone_ok(self.request(op, req, 0).await)
    }
}
