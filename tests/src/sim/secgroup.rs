//! Security groups as the VPC applies them to every ENI, branches included: a flow passes when
//! an egress rule of one of the source ENI's groups and an ingress rule of one of the destination
//! ENI's groups admit it. Nothing is admitted inbound unless a rule says so. Rules name their
//! peers as CIDRs or as groups; a group stands for every address of every ENI that has it.
//! Statefulness (replies of an admitted flow pass) is the fabric's connection tracking, not part
//! of this model.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;

use super::ec2::model::{Eni, Vpc};
use super::scenario::SgRule;

const ALL_PORTS: RangeInclusive<u16> = 0..=u16::MAX;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("protocol {0:?} is not one of tcp, udp, icmp, -1 (all)")]
    UnknownProtocol(String),
    #[error("give both fromPort and toPort, or neither")]
    HalfRange,
    #[error("fromPort {0} is above toPort {1}")]
    Inverted(u16, u16),
    #[error("icmp type and code are 0-255, got {0}")]
    IcmpValue(u16),
    #[error("protocol -1 (all) takes no ports")]
    PortsOnAll,
    #[error("the rule names no cidrs and no groups")]
    NoPeer,
}

/// The traffic a rule admits, before looking at addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Any,
    Tcp(RangeInclusive<u16>),
    Udp(RangeInclusive<u16>),
    /// `fromPort` is the ICMP type and `toPort` the code, as in EC2; absent means all.
    Icmp {
        icmp_type: Option<u8>,
        code: Option<u8>,
    },
}

impl Match {
    pub fn parse(rule: &SgRule) -> Result<Self, RuleError> {
        let ports = match (rule.from_port, rule.to_port) {
            (None, None) => None,
            (Some(from), Some(to)) => Some((from, to)),
            _ => return Err(RuleError::HalfRange),
        };
        let range = |ports: Option<(u16, u16)>| match ports {
            None => Ok(ALL_PORTS),
            Some((from, to)) if from > to => Err(RuleError::Inverted(from, to)),
            Some((from, to)) => Ok(from..=to),
        };
        match rule.protocol.to_ascii_lowercase().as_str() {
            "-1" | "all" if ports.is_some() => Err(RuleError::PortsOnAll),
            "-1" | "all" => Ok(Self::Any),
            "tcp" | "6" => Ok(Self::Tcp(range(ports)?)),
            "udp" | "17" => Ok(Self::Udp(range(ports)?)),
            "icmp" | "1" => {
                let byte = |v: u16| u8::try_from(v).map_err(|_| RuleError::IcmpValue(v));
                Ok(Self::Icmp {
                    icmp_type: ports.map(|p| byte(p.0)).transpose()?,
                    code: ports.map(|p| byte(p.1)).transpose()?,
                })
            }
            _ => Err(RuleError::UnknownProtocol(rule.protocol.clone())),
        }
    }

    pub fn admits(&self, traffic: &Traffic) -> bool {
        match (self, traffic) {
            (Self::Any, _) => true,
            (Self::Tcp(ports), Traffic::Tcp { port }) => ports.contains(port),
            (Self::Udp(ports), Traffic::Udp { port }) => ports.contains(port),
            (
                Self::Icmp { icmp_type, code },
                Traffic::Icmp {
                    icmp_type: t,
                    code: c,
                },
            ) => icmp_type.is_none_or(|want| want == *t) && code.is_none_or(|want| want == *c),
            _ => false,
        }
    }
}

/// One packet's worth of what the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Tcp { port: u16 },
    Udp { port: u16 },
    Icmp { icmp_type: u8, code: u8 },
    Other { protocol: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub traffic: Traffic,
}

/// A rule with its group references resolved to addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Match,
    pub peers: Vec<Ipv4Net>,
}

impl Rule {
    fn admits(&self, peer: Ipv4Addr, traffic: &Traffic) -> bool {
        self.matches.admits(traffic) && self.peers.iter().any(|net| net.contains(&peer))
    }
}

/// The rules that apply to one ENI: those of all its groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniPolicy {
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl EniPolicy {
    pub fn admits_ingress(&self, flow: &Flow) -> bool {
        self.ingress
            .iter()
            .any(|r| r.admits(flow.src, &flow.traffic))
    }

    pub fn admits_egress(&self, flow: &Flow) -> bool {
        self.egress
            .iter()
            .any(|r| r.admits(flow.dst, &flow.traffic))
    }
}

/// Every ENI's rules, by ENI id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub enis: BTreeMap<String, EniPolicy>,
}

impl Policy {
    pub fn of(vpc: &Vpc) -> Self {
        let members = group_members(vpc);
        let resolve = |rules: &[SgRule]| -> Vec<Rule> {
            rules.iter().filter_map(|r| resolve(r, &members)).collect()
        };
        let mut enis = BTreeMap::new();
        for eni in vpc.enis.values() {
            let mut policy = EniPolicy::default();
            for group in eni.groups.iter().filter_map(|g| vpc.groups.get(g)) {
                policy.ingress.extend(resolve(&group.ingress));
                policy.egress.extend(resolve(&group.egress));
            }
            enis.insert(eni.id.clone(), policy);
        }
        Self { enis }
    }

    /// Whether a new flow from one ENI to another passes both ENIs' groups.
    pub fn admits(&self, from_eni: &str, to_eni: &str, flow: &Flow) -> bool {
        let out = self
            .enis
            .get(from_eni)
            .is_some_and(|p| p.admits_egress(flow));
        out && self
            .enis
            .get(to_eni)
            .is_some_and(|p| p.admits_ingress(flow))
    }
}

/// Every address an ENI holds: its private addresses as /32s and its delegated prefixes.
pub fn eni_addresses(eni: &Eni) -> impl Iterator<Item = Ipv4Net> + '_ {
    let ips = eni.private_ips.iter().map(|ip| Ipv4Net::from(*ip));
    ips.chain(eni.prefixes.iter().copied())
}

fn group_members(vpc: &Vpc) -> BTreeMap<&str, Vec<Ipv4Net>> {
    let mut members: BTreeMap<&str, Vec<Ipv4Net>> = BTreeMap::new();
    for eni in vpc.enis.values() {
        for group in &eni.groups {
            members.entry(group).or_default().extend(eni_addresses(eni));
        }
    }
    members
}

/// A scenario rule with its groups turned into addresses; a rule that does not parse admits
/// nothing (scenarios are validated on load, so this is only reached by hand-built models).
fn resolve(rule: &SgRule, members: &BTreeMap<&str, Vec<Ipv4Net>>) -> Option<Rule> {
    let matches = Match::parse(rule).ok()?;
    let mut peers = rule.cidrs.clone();
    for group in &rule.groups {
        peers.extend(members.get(group.as_str()).into_iter().flatten());
    }
    peers.sort();
    peers.dedup();
    Some(Rule { matches, peers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::ec2::ops::{Assign, EniAttribute};
    use crate::sim::scenario::Scenario;

    fn vpc() -> Vpc {
        let scenario: Scenario = serde_json::from_value(serde_json::json!({
            "region": "us-west-2",
            "vpc": {"id": "vpc-1", "cidr": "10.0.0.0/16"},
            "subnets": [{"id": "subnet-a", "cidr": "10.0.0.0/24", "az": "us-west-2a"}],
            "securityGroups": [
                {"id": "sg-node", "name": "node",
                 "ingress": [{"protocol": "-1", "cidrs": ["10.0.0.0/16"]}]},
                {"id": "sg-catalog", "name": "catalog"},
                {"id": "sg-db", "name": "db", "egress": [],
                 "ingress": [
                    {"protocol": "tcp", "fromPort": 3306, "toPort": 3306, "groups": ["sg-catalog"]},
                    {"protocol": "icmp", "fromPort": 8, "toPort": 0, "cidrs": ["10.0.0.0/16"]}
                 ]}
            ],
            "instances": [
                {"id": "i-node", "type": "m5.large", "subnet": "subnet-a",
                 "securityGroups": ["sg-node"], "role": "node", "privateIp": "10.0.0.10"},
                {"id": "i-app", "type": "m5.large", "subnet": "subnet-a",
                 "securityGroups": ["sg-catalog"], "role": "host", "privateIp": "10.0.0.20"},
                {"id": "i-db", "type": "m5.large", "subnet": "subnet-a",
                 "securityGroups": ["sg-db"], "role": "host", "privateIp": "10.0.0.30"}
            ]
        }))
        .unwrap();
        scenario.validate().unwrap();
        Vpc::from_scenario(&scenario).unwrap()
    }

    fn eni_of(vpc: &Vpc, instance: &str) -> String {
        vpc.primary_eni(instance).unwrap().id.clone()
    }

    fn tcp(src: &str, dst: &str, port: u16) -> Flow {
        Flow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            traffic: Traffic::Tcp { port },
        }
    }

    fn rule(protocol: &str, ports: Option<(u16, u16)>) -> SgRule {
        SgRule {
            protocol: protocol.into(),
            from_port: ports.map(|p| p.0),
            to_port: ports.map(|p| p.1),
            cidrs: vec!["0.0.0.0/0".parse().unwrap()],
            groups: vec![],
        }
    }

    #[test]
    fn group_sources_admit_members_only() {
        let vpc = vpc();
        let policy = Policy::of(&vpc);
        let (node, app, db) = (
            eni_of(&vpc, "i-node"),
            eni_of(&vpc, "i-app"),
            eni_of(&vpc, "i-db"),
        );
        assert!(policy.admits(&app, &db, &tcp("10.0.0.20", "10.0.0.30", 3306)));
        assert!(!policy.admits(&app, &db, &tcp("10.0.0.20", "10.0.0.30", 3307)));
        assert!(!policy.admits(&node, &db, &tcp("10.0.0.10", "10.0.0.30", 3306)));
        // Nothing inbound for a group without ingress rules; the node admits the VPC.
        assert!(!policy.admits(&node, &app, &tcp("10.0.0.10", "10.0.0.20", 22)));
        assert!(policy.admits(&app, &node, &tcp("10.0.0.20", "10.0.0.10", 22)));
        // An explicit empty egress list lets no new flow out of db.
        assert!(!policy.admits(&db, &node, &tcp("10.0.0.30", "10.0.0.10", 22)));
    }

    #[test]
    fn membership_follows_groups_and_addresses() {
        let mut vpc = vpc();
        let (node, db) = (eni_of(&vpc, "i-node"), eni_of(&vpc, "i-db"));
        let groups = EniAttribute::Groups(vec!["sg-node".into(), "sg-catalog".into()]);
        vpc.modify_eni(&node, groups).unwrap();
        let policy = Policy::of(&vpc);
        assert!(policy.admits(&node, &db, &tcp("10.0.0.10", "10.0.0.30", 3306)));

        // A secondary address of a member is a member too; one of a non-member is not.
        let assign = Assign {
            ips: vec!["10.0.0.77".parse().unwrap()],
            ..Default::default()
        };
        vpc.assign(&node, assign).unwrap();
        let policy = Policy::of(&vpc);
        assert!(policy.admits(&node, &db, &tcp("10.0.0.77", "10.0.0.30", 3306)));
        assert!(!policy.admits(&node, &db, &tcp("10.0.0.78", "10.0.0.30", 3306)));
    }

    #[test]
    fn default_egress_allows_everything_out() {
        let vpc = vpc();
        let policy = Policy::of(&vpc);
        let app = &policy.enis[&eni_of(&vpc, "i-app")];
        let anywhere = Flow {
            src: "10.0.0.20".parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            traffic: Traffic::Other { protocol: 47 },
        };
        assert!(app.admits_egress(&anywhere));
    }

    #[test]
    fn enis_without_groups_get_the_vpc_default_group() {
        let mut vpc = vpc();
        let create = |vpc: &mut Vpc| {
            let req = crate::sim::ec2::ops::CreateEni {
                subnet_id: "subnet-a".into(),
                ..Default::default()
            };
            vpc.create_eni(req).unwrap().id.clone()
        };
        let (a, b) = (create(&mut vpc), create(&mut vpc));
        assert_eq!(vpc.eni(&a).unwrap().groups, [vpc.default_group.clone()]);
        assert_eq!(vpc.group_name(&vpc.default_group), "default");
        let (ip_a, ip_b) = (
            vpc.eni(&a).unwrap().primary_ip().to_string(),
            vpc.eni(&b).unwrap().primary_ip().to_string(),
        );
        let policy = Policy::of(&vpc);
        // Members of the default group reach each other; others do not reach them.
        assert!(policy.admits(&a, &b, &tcp(&ip_a, &ip_b, 5432)));
        let node = eni_of(&vpc, "i-node");
        assert!(!policy.admits(&node, &b, &tcp("10.0.0.10", &ip_b, 5432)));
    }

    #[test]
    fn protocols_and_ports_match_like_ec2() {
        let icmp_echo = Match::parse(&rule("icmp", Some((8, 0)))).unwrap();
        assert!(icmp_echo.admits(&Traffic::Icmp {
            icmp_type: 8,
            code: 0
        }));
        assert!(!icmp_echo.admits(&Traffic::Icmp {
            icmp_type: 0,
            code: 0
        }));
        let icmp_all = Match::parse(&rule("icmp", None)).unwrap();
        assert!(icmp_all.admits(&Traffic::Icmp {
            icmp_type: 3,
            code: 4
        }));
        assert!(!icmp_all.admits(&Traffic::Tcp { port: 1 }));

        let web = Match::parse(&rule("TCP", Some((80, 443)))).unwrap();
        assert!(web.admits(&Traffic::Tcp { port: 80 }) && web.admits(&Traffic::Tcp { port: 443 }));
        assert!(
            !web.admits(&Traffic::Tcp { port: 444 }) && !web.admits(&Traffic::Udp { port: 80 })
        );
        assert_eq!(
            Match::parse(&rule("17", None)).unwrap(),
            Match::Udp(ALL_PORTS)
        );
        assert!(Match::parse(&rule("-1", None))
            .unwrap()
            .admits(&Traffic::Other { protocol: 50 }));
    }

    #[test]
    fn malformed_rules_are_refused() {
        let half = SgRule {
            to_port: None,
            ..rule("tcp", Some((1, 2)))
        };
        assert_eq!(Match::parse(&half), Err(RuleError::HalfRange));
        assert_eq!(
            Match::parse(&rule("tcp", Some((9, 1)))),
            Err(RuleError::Inverted(9, 1))
        );
        assert_eq!(
            Match::parse(&rule("icmp", Some((300, 0)))),
            Err(RuleError::IcmpValue(300))
        );
        assert_eq!(
            Match::parse(&rule("-1", Some((1, 1)))),
            Err(RuleError::PortsOnAll)
        );
        assert!(matches!(
            Match::parse(&rule("gre", None)),
            Err(RuleError::UnknownProtocol(_))
        ));
    }
}
