//! NodePort and hostPort support for pods on secondary ENIs, as aws-node provides it.
//!
//! A connection that arrives on the primary interface for a node address is marked in
//! conntrack; the pod's replies carry the mark back into the packet, and rule priority 1024
//! (`fwmark 0x80/0x80 lookup main`) sends them out through the primary interface, where the
//! reverse NAT gives them the node's address. Without it the reply follows the pod's
//! priority-1536 rule out of its own ENI with the primary ENI's address as source, and the
//! VPC drops it (source/destination check).
//!
//! The marks are set with nftables (`nft -f -`, one atomic ruleset in table `ip vpc-cni`):
//! this runs once at start-up, not on a pod's path.

use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;
use vpc_cni::netlink::{MacAddr, Netlink, NetlinkError, Rule, RT_TABLE_MAIN};

pub const NODE_PORT_SUPPORT: &str = "AWS_VPC_CNI_NODE_PORT_SUPPORT";
pub const CONNMARK: &str = "AWS_VPC_K8S_CNI_CONNMARK";

/// The variables this module reads, for the manifest check.
pub const ENV_VARS: &[&str] = &[NODE_PORT_SUPPORT, CONNMARK];

/// aws-node's priority for the rule that routes marked replies through the main table.
pub const CONNMARK_RULE_PRIORITY: u32 = 1024;
const TABLE: &str = "vpc-cni";

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error("{name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("primary interface with mac {0} not found")]
    NoPrimary(String),
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("nft: {0}")]
    Nft(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallConfig {
    pub node_port_support: bool,
    pub mark: u32,
}

impl FirewallConfig {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, FirewallError> {
        let get = |n: &str| lookup(n).filter(|v| !v.is_empty());
        let node_port_support = match get(NODE_PORT_SUPPORT).as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(FirewallError::Invalid {
                    name: NODE_PORT_SUPPORT,
                    reason: format!("{other:?} is neither true nor false"),
                })
            }
        };
        let mark = match get(CONNMARK) {
            None => 0x80,
            Some(v) => parse_mark(&v).ok_or(FirewallError::Invalid {
                name: CONNMARK,
                reason: format!("{v:?} is not a non-zero 32-bit mark"),
            })?,
        };
        Ok(FirewallConfig {
            node_port_support,
            mark,
        })
    }
}

fn parse_mark(v: &str) -> Option<u32> {
    let n = match v.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => v.parse().ok()?,
    };
    (n != 0).then_some(n)
}

/// The nftables ruleset: replaces the table as a whole, so a restart never stacks rules.
pub fn ruleset(primary: &str, veth_prefix: &str, mark: u32) -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tiifname \"{primary}\" fib daddr . iif type local ct mark set ct mark or {mark:#x}\n\
         \t\tiifname \"{veth_prefix}*\" meta mark set ct mark and {mark:#x}\n\
         \t\tiifname \"vlan*\" meta mark set ct mark and {mark:#x}\n\
         \t}}\n\
         }}\n"
    )
}

/// Installs the marks and rule 1024 in ipamd's own network namespace (the node's).
pub async fn apply(
    config: FirewallConfig,
    primary_mac: &str,
    veth_prefix: &str,
) -> Result<(), FirewallError> {
    if !config.node_port_support {
        return Ok(());
    }
    let nl = Netlink::current()?;
    let mac: MacAddr = primary_mac
        .parse()
        .map_err(|_| FirewallError::NoPrimary(primary_mac.into()))?;
    let primary = nl
        .link_by_mac(mac)
        .await?
        .ok_or_else(|| FirewallError::NoPrimary(primary_mac.into()))?;
    nft(&ruleset(&primary.name, veth_prefix, config.mark))?;
    let rule = Rule {
        priority: Some(CONNMARK_RULE_PRIORITY),
        table: RT_TABLE_MAIN,
        fwmark: Some(config.mark),
        fwmask: Some(config.mark),
        ..Rule::default()
    };
    nl.add_rule(&rule).await?;
    Ok(())
}

fn nft(ruleset: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FirewallError::Nft(format!("start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| FirewallError::Nft(format!("write ruleset: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| FirewallError::Nft(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(FirewallError::Nft(err.trim().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_aws_nodes() {
        let c = FirewallConfig::from_lookup(|_| None).unwrap();
        assert_eq!(
            c,
            FirewallConfig {
                node_port_support: true,
                mark: 0x80
            }
        );
    }

    #[test]
    fn mark_accepts_hex_and_decimal_and_names_bad_values() {
        let c = FirewallConfig::from_lookup(|n| (n == CONNMARK).then(|| "0x100".into())).unwrap();
        assert_eq!(c.mark, 0x100);
        let c = FirewallConfig::from_lookup(|n| (n == CONNMARK).then(|| "64".into())).unwrap();
        assert_eq!(c.mark, 64);
        for bad in ["0", "mark", "0xZZ"] {
            let err = FirewallConfig::from_lookup(|n| (n == CONNMARK).then(|| bad.into()));
            assert!(err.unwrap_err().to_string().starts_with(CONNMARK));
        }
        let err = FirewallConfig::from_lookup(|n| (n == NODE_PORT_SUPPORT).then(|| "yes".into()));
        assert!(err.unwrap_err().to_string().starts_with(NODE_PORT_SUPPORT));
    }

    #[test]
    fn ruleset_marks_on_the_primary_and_restores_from_pod_links() {
        let r = ruleset("eth0", "eni", 0x80);
        assert!(
            r.contains("iifname \"eth0\" fib daddr . iif type local ct mark set ct mark or 0x80")
        );
        assert!(r.contains("iifname \"eni*\" meta mark set ct mark and 0x80"));
        assert!(r.contains("iifname \"vlan*\" meta mark set ct mark and 0x80"));
        assert!(r.starts_with("table ip vpc-cni\ndelete table ip vpc-cni\n"));
    }
}
