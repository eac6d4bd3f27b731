//! Policy routing rules.

use ipnet::IpNet;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{exists_ok, gone_ok, Netlink, NetlinkError};

/// Upper bound for "delete every rule like this": a kernel never holds that many duplicates,
/// so hitting it means something keeps re-adding them.
const MAX_DUPLICATES: usize = 64;

/// One rule. `None` fields match anything on delete; `table` 0 likewise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub priority: Option<u32>,
    pub table: u32,
    pub source: Option<IpNet>,
    pub destination: Option<IpNet>,
    pub iif: Option<String>,
    pub fwmark: Option<u32>,
    pub fwmask: Option<u32>,
    pub v6: bool,
}

impl Rule {
    /// `to DST lookup TABLE`
    pub fn to(destination: IpNet, table: u32) -> Rule {
        Rule {
            table,
            destination: Some(destination),
            v6: matches!(destination, IpNet::V6(_)),
            ..Rule::default()
        }
    }

    /// `from SRC lookup TABLE`
    pub fn from(source: IpNet, table: u32) -> Rule {
        Rule {
            table,
            source: Some(source),
            v6: matches!(source, IpNet::V6(_)),
            ..Rule::default()
        }
    }

    /// `iif NAME lookup TABLE`
    pub fn iif(name: &str, table: u32, v6: bool) -> Rule {
        Rule {
            table,
            iif: Some(name.to_string()),
            v6,
            ..Rule::default()
        }
    }

    pub fn priority(self, priority: u32) -> Rule {
        Rule {
            priority: Some(priority),
            ..self
        }
    }

    fn from_message(msg: &RuleMessage) -> Option<Rule> {
        let v6 = match msg.header.family {
            AddressFamily::Inet => false,
            AddressFamily::Inet6 => true,
            _ => return None,
        };
        let mut rule = Rule {
            table: u32::from(msg.header.table),
            v6,
            ..Rule::default()
        };
        for attr in &msg.attributes {
            match attr {
                RuleAttribute::Priority(p) => rule.priority = Some(*p),
                RuleAttribute::Table(t) => rule.table = *t,
                RuleAttribute::Source(ip) => {
                    rule.source = IpNet::new(*ip, msg.header.src_len).ok();
                }
                RuleAttribute::Destination(ip) => {
                    rule.destination = IpNet::new(*ip, msg.header.dst_len).ok();
                }
                RuleAttribute::Iifname(name) => rule.iif = Some(name.clone()),
                RuleAttribute::FwMark(m) => rule.fwmark = Some(*m),
                RuleAttribute::FwMask(m) => rule.fwmask = Some(*m),
                _ => {}
            }
        }
        // The kernel always reports a priority; an unset one in a request means "any".
        rule.priority = rule.priority.or(Some(0));
        // Rules without a mark come back with FRA_FWMASK 0; that is "no mark match".
        if rule.fwmark.is_none() && rule.fwmask == Some(0) {
            rule.fwmask = None;
        }
        Some(rule)
    }

    fn to_message(&self, action: RuleAction) -> RuleMessage {
        let mut msg = RuleMessage::default();
        msg.header.family = if self.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.table = u8::try_from(self.table).unwrap_or(252);
        msg.header.action = action;
        let attrs = &mut msg.attributes;
        if self.table != 0 {
            attrs.push(RuleAttribute::Table(self.table));
        }
        if let Some(p) = self.priority {
            attrs.push(RuleAttribute::Priority(p));
        }
        if let Some(src) = self.source {
            msg.header.src_len = src.prefix_len();
            attrs.push(RuleAttribute::Source(src.addr()));
        }
        if let Some(dst) = self.destination {
            msg.header.dst_len = dst.prefix_len();
            attrs.push(RuleAttribute::Destination(dst.addr()));
        }
        if let Some(iif) = &self.iif {
            attrs.push(RuleAttribute::Iifname(iif.clone()));
        }
        if let Some(mark) = self.fwmark {
            attrs.push(RuleAttribute::FwMark(mark));
        }
        if let Some(mask) = self.fwmask {
            attrs.push(RuleAttribute::FwMask(mask));
        }
        msg
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(p) = self.priority {
            s += &format!("{p}: ");
        }
        match (&self.source, &self.destination) {
            (Some(src), _) => s += &format!("from {src}"),
            (None, _) => s += "from all",
        }
        if let Some(dst) = self.destination {
            s += &format!(" to {dst}");
        }
        if let Some(iif) = &self.iif {
            s += &format!(" iif {iif}");
        }
        if let Some(mark) = self.fwmark {
            s += &format!(" fwmark {mark:#x}");
        }
        s + &format!(" lookup {}", self.table)
    }
}

impl Netlink {
    /// `ip [-6] rule show`
    pub async fn rules(&self, v6: bool) -> Result<Vec<Rule>, NetlinkError> {
        let probe = Rule {
            v6,
            ..Rule::default()
        };
        let req = RouteNetlinkMessage::GetRule(probe.to_message(RuleAction::Unspec));
        let replies = self.dump(|| "list rules".into(), req).await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Rule::from_message(r),
                _ => None,
            })
            .collect())
    }

    /// `ip rule add ...`; an identical rule already there is success (the request carries
    /// NLM_F_EXCL, so the kernel refuses a duplicate instead of adding a second copy).
    pub async fn add_rule(&self, rule: &Rule) -> Result<(), NetlinkError> {
        let req = RouteNetlinkMessage::NewRule(rule.to_message(RuleAction::ToTable));
        let op = || format!("add rule {}", rule.describe());
        exists_ok(self.request(op, req, NLM_F_CREATE | NLM_F_EXCL).await)
    }

    /// `ip rule del ...` (first match); Ok(false) when none matched.
    pub async fn delete_rule(&self, rule: &Rule) -> Result<bool, NetlinkError> {
        let req = RouteNetlinkMessage::DelRule(rule.to_message(RuleAction::Unspec));
        let op = || format!("delete rule {}", rule.describe());
        gone_ok(self.request(op, req, 0).await)
    }

    /// `while ip rule del ...; do :; done`: removes every rule the pattern matches (older
    /// releases could leave duplicates) and returns how many went.
    pub async fn delete_rules(&self, rule: &Rule) -> Result<usize, NetlinkError> {
        let mut deleted = 0;
        while deleted < MAX_DUPLICATES && self.delete_rule(rule).await? {
            deleted += 1;
        }
        Ok(deleted)
    }
}
