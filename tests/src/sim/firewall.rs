//! The fabric's firewall: EC2's source/destination check and security groups for every plugged
//! ENI, as one iptables-legacy filter table in the fabric namespace. iptables-legacy because the
//! User-mode Linux kernel that carries the VLAN datapath has no nftables ip/inet families, and one
//! firewall path should serve both kernels. The table is rendered whole from the ports and the
//! policy and swapped in atomically by iptables-legacy-restore.
//!
//! A forwarded packet walks: the source check (its source must be an address of the ENI it came
//! from), then connection tracking (replies of admitted flows pass, which makes the groups
//! stateful), then the egress chain of the ENI it came from (RETURN when a rule admits it, DROP
//! otherwise), then the ingress chain of the ENI it goes to (ACCEPT or DROP).
//!
//! The link to the hosts outside the VPC, when there is one, is no ENI: what comes from it is
//! not source-checked (a VPN carries any source) and meets the ingress chain of the ENI it goes
//! to; what goes to it is accepted once the sending ENI's egress chain admitted it.

use std::fmt::Write;

use ipnet::Ipv4Net;

use super::secgroup::{EniPolicy, Match, Policy, Rule};

pub const SOURCE_CHECK_CHAIN: &str = "vpcsim-srccheck";
pub const SOURCE_CHECK_COMMENT: &str = "source/destination check drops";
pub const OUTSIDE_COMMENT: &str = "to outside";

/// What the firewall needs to know about one plugged ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwPort {
    pub eni_id: String,
    /// The fabric-side link: a veth end, or the 802.1Q link of a branch.
    pub link: String,
    pub sources: Vec<Ipv4Net>,
    /// Source/destination check off: any source may leave this ENI.
    pub any_source: bool,
}

/// Chains are named after the ENI; "out-eni-" plus 17 hex digits fits iptables' 28 characters.
pub fn ingress_chain(eni_id: &str) -> String {
    format!("in-{eni_id}")
}

pub fn egress_chain(eni_id: &str) -> String {
    format!("out-{eni_id}")
}

/// The whole filter table as iptables-legacy-restore reads it. `outside` is the fabric's link
/// to the hosts beyond the VPC, if it has one.
pub fn ruleset(ports: &[FwPort], policy: &Policy, outside: Option<&str>) -> String {
    let none = EniPolicy::default();
    let mut doc = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n");
    doc.push_str(":OUTPUT ACCEPT [0:0]\n");
    let _ = writeln!(doc, ":{SOURCE_CHECK_CHAIN} - [0:0]");
    for port in ports {
        let _ = writeln!(doc, ":{} - [0:0]", egress_chain(&port.eni_id));
        let _ = writeln!(doc, ":{} - [0:0]", ingress_chain(&port.eni_id));
    }
    forward_chain(&mut doc, ports, outside);
    source_check(&mut doc, ports, outside);
    for port in ports {
        let rules = policy.enis.get(&port.eni_id).unwrap_or(&none);
        group_chain(
            &mut doc,
            &egress_chain(&port.eni_id),
            &rules.egress,
            "-d",
            "RETURN",
        );
        group_chain(
            &mut doc,
            &ingress_chain(&port.eni_id),
            &rules.ingress,
            "-s",
            "ACCEPT",
        );
    }
    doc.push_str("COMMIT\n");
    doc
}

fn forward_chain(doc: &mut String, ports: &[FwPort], outside: Option<&str>) {
    let _ = writeln!(doc, "-A FORWARD -j {SOURCE_CHECK_CHAIN}");
    doc.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    for port in ports {
        let _ = writeln!(
            doc,
            "-A FORWARD -i {} -j {}",
            port.link,
            egress_chain(&port.eni_id)
        );
    }
    for port in ports {
        let _ = writeln!(
            doc,
            "-A FORWARD -o {} -j {}",
            port.link,
            ingress_chain(&port.eni_id)
        );
    }
    // Whatever reaches this rule from an ENI has passed that ENI's egress chain.
    if let Some(link) = outside {
        let _ = writeln!(
            doc,
            "-A FORWARD -o {link} -m comment --comment \"{OUTSIDE_COMMENT}\" -j ACCEPT"
        );
    }
    doc.push_str("-A FORWARD -m comment --comment \"to no eni\" -j DROP\n");
}

fn source_check(doc: &mut String, ports: &[FwPort], outside: Option<&str>) {
    let chain = SOURCE_CHECK_CHAIN;
    if let Some(link) = outside {
        let _ = writeln!(doc, "-A {chain} -i {link} -j RETURN");
    }
    for port in ports {
        if port.any_source {
            let _ = writeln!(doc, "-A {chain} -i {} -j RETURN", port.link);
            continue;
        }
        for source in &port.sources {
            let _ = writeln!(doc, "-A {chain} -i {} -s {source} -j RETURN", port.link);
        }
    }
    let _ = writeln!(
        doc,
        "-A {chain} -m comment --comment \"{SOURCE_CHECK_COMMENT}\" -j DROP"
    );
}

/// One ENI's rules in one direction: `verdict` for each admitted peer, DROP for the rest.
/// `peer_flag` is `-s` for ingress (the peer sends) and `-d` for egress (the peer receives).
fn group_chain(doc: &mut String, chain: &str, rules: &[Rule], peer_flag: &str, verdict: &str) {
    for rule in rules {
        let matches = match_args(&rule.matches);
        for peer in &rule.peers {
            let peer = if peer.prefix_len() == 0 {
                String::new()
            } else {
                format!(" {peer_flag} {peer}")
            };
            let _ = writeln!(doc, "-A {chain}{peer}{matches} -j {verdict}");
        }
    }
    let _ = writeln!(
        doc,
        "-A {chain} -m comment --comment \"{chain} denied\" -j DROP"
    );
}

/// The iptables match for a rule's protocol and ports, with a leading space, or nothing.
pub fn match_args(m: &Match) -> String {
    let ports = |proto: &str, range: &std::ops::RangeInclusive<u16>| {
        if range.start() == &0 && range.end() == &u16::MAX {
            format!(" -p {proto}")
        } else {
            format!(
                " -p {proto} -m {proto} --dport {}:{}",
                range.start(),
                range.end()
            )
        }
    };
    match m {
        Match::Any => String::new(),
        Match::Tcp(range) => ports("tcp", range),
        Match::Udp(range) => ports("udp", range),
        Match::Icmp {
            icmp_type: None, ..
        } => " -p icmp".to_string(),
        Match::Icmp {
            icmp_type: Some(t),
            code: None,
        } => format!(" -p icmp -m icmp --icmp-type {t}"),
        Match::Icmp {
            icmp_type: Some(t),
            code: Some(c),
        } => format!(" -p icmp -m icmp --icmp-type {t}/{c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn port(eni: &str, link: &str, sources: &[&str]) -> FwPort {
        FwPort {
            eni_id: eni.into(),
            link: link.into(),
            sources: sources.iter().map(|s| net(s)).collect(),
            any_source: false,
        }
    }

    #[test]
    fn table_checks_sources_then_state_then_groups() {
        let ports = [
            port("eni-a", "va", &["10.0.0.10/32", "10.0.0.48/28"]),
            FwPort {
                any_source: true,
                ..port("eni-b", "bb", &["10.0.32.5/32"])
            },
        ];
        let mut policy = Policy::default();
        policy.enis.insert(
            "eni-a".into(),
            EniPolicy {
                ingress: vec![Rule {
                    matches: Match::Tcp(3306..=3306),
                    peers: vec![net("10.0.32.5/32")],
                }],
                egress: vec![Rule {
                    matches: Match::Any,
                    peers: vec![net("0.0.0.0/0")],
                }],
            },
        );
        let doc = ruleset(&ports, &policy, None);
        let lines: Vec<&str> = doc.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("{needle:?} missing in\n{doc}"))
        };
        let first = at("-A FORWARD -j vpcsim-srccheck");
        let state = at("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
        let out = at("-A FORWARD -i va -j out-eni-a");
        let into = at("-A FORWARD -o bb -j in-eni-b");
        assert!(first < state && state < out && out < into);
        at("-A vpcsim-srccheck -i va -s 10.0.0.48/28 -j RETURN");
        at("-A vpcsim-srccheck -i bb -j RETURN");
        at("-A in-eni-a -s 10.0.32.5/32 -p tcp -m tcp --dport 3306:3306 -j ACCEPT");
        at("-A out-eni-a -j RETURN");
        // An ENI without rules admits nothing.
        let deny_b = at("-A in-eni-b -m comment --comment \"in-eni-b denied\" -j DROP");
        assert!(!lines[..deny_b]
            .iter()
            .any(|l| l.starts_with("-A in-eni-b ")));
        assert!(doc.starts_with("*filter\n") && doc.ends_with("COMMIT\n"));
        assert!(egress_chain("eni-0123456789abcdef0").len() <= 28);
    }

    #[test]
    fn outside_link_skips_the_source_check_and_follows_egress() {
        let ports = [port("eni-a", "va", &["10.0.0.10/32"])];
        let without = ruleset(&ports, &Policy::default(), None);
        assert!(!without.contains("xoutside"));

        let doc = ruleset(&ports, &Policy::default(), Some("xoutside"));
        let lines: Vec<&str> = doc.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("{needle:?} missing in\n{doc}"))
        };
        let unchecked = at("-A vpcsim-srccheck -i xoutside -j RETURN");
        let check_drop = at(
            "-A vpcsim-srccheck -m comment --comment \"source/destination check drops\" -j DROP",
        );
        assert!(unchecked < check_drop);
        let egress = at("-A FORWARD -i va -j out-eni-a");
        let ingress = at("-A FORWARD -o va -j in-eni-a");
        let out = at("-A FORWARD -o xoutside -m comment --comment \"to outside\" -j ACCEPT");
        let no_eni = at("-A FORWARD -m comment --comment \"to no eni\" -j DROP");
        assert!(egress < out && ingress < out && out + 1 == no_eni);
        // Nothing else names the outside link: from it, packets meet the ENIs' ingress chains.
        assert_eq!(lines.iter().filter(|l| l.contains("xoutside")).count(), 2);
    }

    #[test]
    fn icmp_and_port_matches() {
        let all_icmp = Match::Icmp {
            icmp_type: None,
            code: None,
        };
        assert_eq!(match_args(&all_icmp), " -p icmp");
        let echo = Match::Icmp {
            icmp_type: Some(8),
            code: Some(0),
        };
        assert_eq!(match_args(&echo), " -p icmp -m icmp --icmp-type 8/0");
        assert_eq!(match_args(&Match::Udp(0..=u16::MAX)), " -p udp");
        assert_eq!(match_args(&Match::Any), "");
    }
}
