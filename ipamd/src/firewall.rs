//! The node's packet marks and source NAT, as aws-node sets them up.
//!
//! Source NAT: a pod's connection to an address outside the VPC (and outside
//! AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS) leaves with the primary ENI's primary address, so the
//! internet gateway, which only translates that address, carries it. Traffic to the VPC keeps
//! the pod's address. Packets leaving through a `vlan+` link (branch ENIs of strict-mode pods)
//! are never translated, so their own security groups see the pod's address.
//!
//! Marks: the first packet of such a pod connection sets a mark in conntrack, every packet of
//! it carries the mark, and rule priority 1024 (`fwmark 0x80/0x80 lookup main`) routes it
//! through the main table, out of the primary ENI, where the address is translated. Without it
//! a pod on a secondary ENI would leave through its own ENI with the primary ENI's address as
//! source, which the VPC drops. The same mark serves NodePort and hostPort: a connection that
//! arrives on the primary interface for a node address is marked, and the pod's replies follow
//! it back out through the primary interface.
//!
//! The rules live in iptables chains of ipamd's own (`VPC-CNI-*`), reached by one jump from the
//! built-in chain, and are replaced in one `iptables-restore --noflush` at start-up: a restart
//! never stacks rules and another program's rules are never touched. Like kube-proxy, ipamd uses
//! whichever iptables backend (legacy or nft) already holds the node's rules. This runs once at
//! start-up, not on a pod's path.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::Ipv4Net;
use thiserror::Error;
use tokio::sync::watch;
use vpc_cni::netlink::{MacAddr, Netlink, NetlinkError, Rule, RT_TABLE_MAIN};

use crate::imds::{Identity, Imds};

pub const NODE_PORT_SUPPORT: &str = "AWS_VPC_CNI_NODE_PORT_SUPPORT";
pub const CONNMARK: &str = "AWS_VPC_K8S_CNI_CONNMARK";
pub const EXTERNAL_SNAT: &str = "AWS_VPC_K8S_CNI_EXTERNALSNAT";
pub const EXCLUDE_SNAT_CIDRS: &str = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS";
pub const RANDOMIZE_SNAT: &str = "AWS_VPC_K8S_CNI_RANDOMIZESNAT";

/// The variables this module reads, for the manifest check.
pub const ENV_VARS: &[&str] = &[
    NODE_PORT_SUPPORT,
    CONNMARK,
    EXTERNAL_SNAT,
    EXCLUDE_SNAT_CIDRS,
    RANDOMIZE_SNAT,
];

/// aws-node's priority for the rule that routes marked packets through the main table.
pub const CONNMARK_RULE_PRIORITY: u32 = 1024;

/// ipamd's chains: marks in the mangle table, translation in the nat table.
pub const MARK_CHAIN: &str = "VPC-CNI-PREROUTING";
pub const EGRESS_CHAIN: &str = "VPC-CNI-EGRESS";
pub const SNAT_CHAIN: &str = "VPC-CNI-SNAT";
/// The comment on the jump rules in the built-in chains, so a restart finds and replaces them.
const JUMP_COMMENT: &str = "vpc-cni";

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error("{name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("primary interface with mac {0} not found")]
    NoPrimary(String),
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("{program}: {reason}")]
    Iptables { program: String, reason: String },
}

/// How the translated source port is chosen (AWS_VPC_K8S_CNI_RANDOMIZESNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnatPorts {
    /// `prng`, the default: fully random ports, which avoids collisions of many pods' flows
    /// to one destination.
    FullyRandom,
    /// `hashrandom`: a hash-seeded port.
    Random,
    /// `none`: the kernel's sequential choice.
    Sequential,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    pub node_port_support: bool,
    pub mark: u32,
    /// Something outside the node (a NAT gateway, a proxy) translates pod addresses.
    pub external_snat: bool,
    /// Destinations that keep the pod's address besides the VPC's own CIDRs.
    pub exclude_snat: Vec<Ipv4Net>,
    pub snat_ports: SnatPorts,
}

impl FirewallConfig {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, FirewallError> {
        let get = |n: &str| lookup(n).filter(|v| !v.trim().is_empty());
        let mark = match get(CONNMARK) {
            None => 0x80,
            Some(v) => parse_mark(&v).ok_or(FirewallError::Invalid {
                name: CONNMARK,
                reason: format!("{v:?} is not a non-zero 32-bit mark"),
            })?,
        };
        let snat_ports = match get(RANDOMIZE_SNAT).as_deref().map(str::trim) {
            None | Some("prng") => SnatPorts::FullyRandom,
            Some("hashrandom") => SnatPorts::Random,
            Some("none") => SnatPorts::Sequential,
            Some(other) => {
                return Err(FirewallError::Invalid {
                    name: RANDOMIZE_SNAT,
                    reason: format!("{other:?} is none of prng, hashrandom, none"),
                })
            }
        };
        Ok(FirewallConfig {
            node_port_support: bool_var(&get, NODE_PORT_SUPPORT, true)?,
            mark,
            external_snat: bool_var(&get, EXTERNAL_SNAT, false)?,
            exclude_snat: cidr_list(get(EXCLUDE_SNAT_CIDRS).as_deref().unwrap_or(""))?,
            snat_ports,
        })
    }

    /// Whether pods' off-VPC connections are marked and translated on this node.
    pub fn snat(&self) -> bool {
        !self.external_snat
    }

    /// Which well-known packet mark the configured one shares bits with, if any: a shared
    /// bit makes the other program's packets follow rule 1024, or ours its rules.
    pub fn mark_clash(&self) -> Option<&'static str> {
        [
            (0x4000, "kube-proxy's masquerade mark 0x4000"),
            (0x8000, "kube-proxy's drop mark 0x8000"),
            (0x2000, "portmap's masquerade mark 0x2000"),
        ]
        .into_iter()
        .find(|(bits, _)| self.mark & bits != 0)
        .map(|(_, what)| what)
    }
}

fn bool_var(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, FirewallError> {
    // Go's strconv.ParseBool spellings, which aws-node accepts.
    match get(name).as_deref().map(str::trim) {
        None => Ok(default),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(FirewallError::Invalid {
            name,
            reason: format!("{other:?} is neither true nor false"),
        }),
    }
}

fn cidr_list(v: &str) -> Result<Vec<Ipv4Net>, FirewallError> {
    v.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .map_err(|_| FirewallError::Invalid {
                    name: EXCLUDE_SNAT_CIDRS,
                    reason: format!("{c:?} is not an IPv4 CIDR"),
                })
        })
        .collect()
}

/// A mark as aws-node reads it (Go's base-0 integers): 0x or 0X hexadecimal, a leading 0
/// octal, else decimal.
fn parse_mark(v: &str) -> Option<u32> {
    let v = v.trim();
    let n = if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()?
    } else if let Some(octal) = v.strip_prefix('0').filter(|o| !o.is_empty()) {
        u32::from_str_radix(octal, 8).ok()?
    } else {
        v.parse().ok()?
    };
    (n != 0).then_some(n)
}

/// What the rules are made of on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The primary ENI's link name.
    pub primary_link: String,
    /// The primary ENI's primary address: the source of translated traffic.
    pub primary_ip: Ipv4Addr,
    pub vpc_cidrs: Vec<Ipv4Net>,
    pub veth_prefix: String,
}

/// The CIDRs whose traffic keeps the pod's address: the VPC's, then the configured ones.
fn exempt(config: &FirewallConfig, facts: &NodeFacts) -> Vec<Ipv4Net> {
    let mut out: Vec<Ipv4Net> = Vec::new();
    for cidr in facts.vpc_cidrs.iter().chain(&config.exclude_snat) {
        if !out.contains(cidr) {
            out.push(*cidr);
        }
    }
    out
}

/// The mangle table's rules: NodePort marks, pod egress marks, and the mark's restore into
/// every packet that comes from a pod.
fn mark_rules(config: &FirewallConfig, facts: &NodeFacts) -> Vec<String> {
    let m = config.mark;
    let pods = format!("{}+", facts.veth_prefix);
    let restore = format!("-j CONNMARK --restore-mark --nfmask {m:#x} --ctmask {m:#x}");
    let mut rules = Vec::new();
    if config.node_port_support {
        rules.push(format!(
            "-A {MARK_CHAIN} -i {} -m addrtype --dst-type LOCAL --limit-iface-in \
             -j CONNMARK --set-xmark {m:#x}/{m:#x}",
            facts.primary_link
        ));
    }
    if config.snat() {
        rules.push(format!(
            "-A {MARK_CHAIN} -i {pods} -m conntrack --ctstate NEW -j {EGRESS_CHAIN}"
        ));
        rules.push(format!(
            "-A {EGRESS_CHAIN} -m addrtype --dst-type LOCAL -j RETURN"
        ));
        for cidr in exempt(config, facts) {
            rules.push(format!("-A {EGRESS_CHAIN} -d {cidr} -j RETURN"));
        }
        rules.push(format!(
            "-A {EGRESS_CHAIN} -j CONNMARK --set-xmark {m:#x}/{m:#x}"
        ));
    }
    if !rules.is_empty() {
        rules.push(format!("-A {MARK_CHAIN} -i {pods} {restore}"));
        rules.push(format!("-A {MARK_CHAIN} -i vlan+ {restore}"));
    }
    rules
}

/// The nat table's rules: everything leaving the node for outside the VPC takes the primary
/// address, except what leaves through a branch ENI's VLAN.
fn snat_rules(config: &FirewallConfig, facts: &NodeFacts) -> Vec<String> {
    if !config.snat() {
        return Vec::new();
    }
    let mut rules = vec![format!("-A {SNAT_CHAIN} -o vlan+ -j RETURN")];
    for cidr in exempt(config, facts) {
        rules.push(format!("-A {SNAT_CHAIN} -d {cidr} -j RETURN"));
    }
    let ports = match config.snat_ports {
        SnatPorts::FullyRandom => " --random-fully",
        SnatPorts::Random => " --random",
        SnatPorts::Sequential => "",
    };
    rules.push(format!(
        "-A {SNAT_CHAIN} -m addrtype ! --dst-type LOCAL -j SNAT --to-source {}{ports}",
        facts.primary_ip
    ));
    rules
}

/// aws-node's rules, which would go on marking and translating beside ipamd's after a switch
/// of image: its chains (emptied, then deleted) and the rules of the built-in chains that carry
/// its comments or jump to those chains.
const AWS_NODE_CHAINS: [&str; 2] = ["AWS-SNAT-CHAIN-", "AWS-CONNMARK-CHAIN-"];
const AWS_NODE_COMMENTS: [&str; 4] = [
    "\"AWS SNAT CHAIN\"",
    "\"AWS, primary ENI\"",
    "\"AWS, outbound connections\"",
    "\"AWS, CONNMARK\"",
];

/// In `table` of `saved`: aws-node's chains, and the deletions of its rules in built-in chains.
fn aws_node_leftovers(saved: &str, table: &str) -> (Vec<String>, Vec<String>) {
    let (mut chains, mut deletes) = (Vec::new(), Vec::new());
    let mut current = "";
    for line in saved.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            current = name;
            continue;
        }
        if current != table {
            continue;
        }
        let is_aws_chain = |c: &str| AWS_NODE_CHAINS.iter().any(|p| c.starts_with(p));
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if is_aws_chain(name) {
                chains.push(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let target = rule.rsplit_once("-j ").map_or("", |(_, t)| t);
            let tagged = AWS_NODE_COMMENTS.iter().any(|c| rule.contains(c));
            let built_in = chain.chars().all(|c| c.is_ascii_uppercase());
            if built_in && (tagged || is_aws_chain(target.split_whitespace().next().unwrap_or("")))
            {
                deletes.push(format!("-D {rule}"));
            }
        }
    }
    (chains, deletes)
}

/// The lines that remove aws-node's rules from one table section.
fn aws_node_removal(saved: &str, table: &str) -> (String, String) {
    let (chains, deletes) = aws_node_leftovers(saved, table);
    let declare: String = chains.iter().map(|c| format!(":{c} - [0:0]\n")).collect();
    let mut remove: String = deletes.iter().map(|d| format!("{d}\n")).collect();
    remove += &chains
        .iter()
        .map(|c| format!("-X {c}\n"))
        .collect::<String>();
    (declare, remove)
}

/// The lines of `saved` (iptables-save output) in `table` that jump from `hook` to `target`.
fn saved_jumps<'a>(saved: &'a str, table: &str, hook: &str, target: &str) -> Vec<&'a str> {
    let mut current = "";
    let mut out = Vec::new();
    let (start, end) = (format!("-A {hook} "), format!("-j {target}"));
    let ours = format!("--comment {JUMP_COMMENT} ");
    for line in saved.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            current = name;
        } else if current == table
            && line.starts_with(&start)
            && line.ends_with(&end)
            && line.contains(&ours)
        {
            out.push(line);
        }
    }
    out
}

/// ipamd's chains by table, the first of each reached from the built-in `hook`.
const TABLES: [(&str, &str, &[&str]); 2] = [
    ("mangle", "PREROUTING", &[MARK_CHAIN, EGRESS_CHAIN]),
    ("nat", "POSTROUTING", &[SNAT_CHAIN]),
];

/// What one table's section does with ipamd's chains.
enum Chains<'a> {
    /// Empty them and fill them with these rules (none: leave them empty, without a jump).
    Install(&'a [String]),
    /// Delete them, in a backend ipamd does not use.
    Remove,
}

/// One table's part of a restore document, given `saved` (the backend's current rules):
/// ipamd's chains are declared, which empties them under --noflush; earlier jumps to them
/// and aws-node's rules are deleted; then the chains are filled or deleted. Empty when
/// there is nothing to remove.
fn table_section(table: &str, hook: &str, chains: &[&str], saved: &str, what: Chains) -> String {
    let declared: Vec<&str> = match what {
        Chains::Install(_) => chains.to_vec(),
        Chains::Remove => chains
            .iter()
            .copied()
            .filter(|c| saved.lines().any(|l| l.trim() == format!(":{c} - [0:0]")))
            .collect(),
    };
    let (aws_declare, aws_remove) = aws_node_removal(saved, table);
    if matches!(what, Chains::Remove) && declared.is_empty() && aws_remove.is_empty() {
        return String::new();
    }
    let mut doc = format!("*{table}\n");
    for chain in &declared {
        doc += &format!(":{chain} - [0:0]\n");
    }
    doc += &aws_declare;
    let entry = chains[0];
    for old in saved_jumps(saved, table, hook, entry) {
        doc += &format!("-D{}\n", &old["-A".len()..]);
    }
    doc += &aws_remove;
    match what {
        Chains::Install(rules) if !rules.is_empty() => {
            doc += &format!("-A {hook} -m comment --comment {JUMP_COMMENT} -j {entry}\n");
            for rule in rules {
                doc += &format!("{rule}\n");
            }
        }
        Chains::Install(_) => {}
        Chains::Remove => {
            for chain in &declared {
                doc += &format!("-X {chain}\n");
            }
        }
    }
    doc + "COMMIT\n"
}

/// A document that removes ipamd's jumps and chains, and aws-node's, from a backend, given its
/// current rules: for the backend ipamd does not use, where an earlier start (or aws-node)
/// may have left them.
pub fn removal_document(saved: &str) -> String {
    TABLES
        .iter()
        .map(|(table, hook, chains)| table_section(table, hook, chains, saved, Chains::Remove))
        .collect()
}

/// The whole `iptables-restore --noflush` document for this node, given the backend's
/// current rules.
pub fn restore_document(config: &FirewallConfig, facts: &NodeFacts, saved: &str) -> String {
    let (marks, snat) = (mark_rules(config, facts), snat_rules(config, facts));
    TABLES
        .iter()
        .zip([&marks, &snat])
        .map(|((table, hook, chains), rules)| {
            table_section(table, hook, chains, saved, Chains::Install(rules))
        })
        .collect()
}

/// An iptables backend: the legacy x_tables or the nftables-based one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
}

impl Backend {
    fn program(self, verb: &str) -> String {
        match self {
            Backend::Legacy => format!("iptables-legacy-{verb}"),
            Backend::Nft => format!("iptables-nft-{verb}"),
        }
    }
}

/// The number of other programs' rules in an iptables-save output: ipamd's own do not count,
/// or a backend would keep winning only because ipamd used it before.
fn rule_count(saved: &str) -> usize {
    saved
        .lines()
        .filter(|l| l.starts_with("-A ") && !l.contains("VPC-CNI-"))
        .count()
}

/// The backend the node already uses: the one holding more rules (kube-proxy's and the
/// runtime's). On a node with none, nft when this kernel offers it, else legacy.
pub fn choose_backend(legacy: Option<&str>, nft: Option<&str>) -> Option<Backend> {
    match (legacy, nft) {
        (Some(l), Some(n)) if rule_count(l) > rule_count(n) => Some(Backend::Legacy),
        (_, Some(_)) => Some(Backend::Nft),
        (Some(_), None) => Some(Backend::Legacy),
        (None, None) => None,
    }
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    let fail = |reason: String| FirewallError::Iptables {
        program: program.to_string(),
        reason,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("start: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| fail(format!("write rules: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(err.trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn restore(backend: Backend, doc: &str) -> Result<String, FirewallError> {
    let program = backend.program("restore");
    // The legacy backend commits table by table: a document that fails in nat would leave
    // mangle's marks without the translation. A dry run first catches what it can. The nft
    // backend commits the whole document as one transaction.
    if backend == Backend::Legacy {
        run(&program, &["-w", "5", "--noflush", "--test"], Some(doc))?;
    }
    run(&program, &["-w", "5", "--noflush"], Some(doc))
}

/// The current rules of `backend`, or None when it does not work in this kernel.
fn save(backend: Backend) -> Option<String> {
    match run(&backend.program("save"), &[], None) {
        Ok(out) => Some(out),
        Err(e) => {
            tracing::debug!(error = %e, ?backend, "iptables backend unusable");
            None
        }
    }
}

/// Replaces ipamd's chains in the backend the node uses.
fn replace_chains(config: &FirewallConfig, facts: &NodeFacts) -> Result<Backend, FirewallError> {
    let legacy = save(Backend::Legacy);
    let nft = save(Backend::Nft);
    let backend =
        choose_backend(legacy.as_deref(), nft.as_deref()).ok_or(FirewallError::Iptables {
            program: "iptables-save".into(),
            reason: "neither iptables-legacy-save nor iptables-nft-save works".into(),
        })?;
    let (saved, other, other_saved) = match backend {
        Backend::Legacy => (legacy, Backend::Nft, nft),
        Backend::Nft => (nft, Backend::Legacy, legacy),
    };
    let doc = restore_document(config, facts, &saved.unwrap_or_default());
    restore(backend, &doc)?;
    // Rules an earlier start left in the other backend would go on marking and translating.
    let leftover = removal_document(&other_saved.unwrap_or_default());
    if !leftover.is_empty() {
        restore(other, &leftover)?;
        tracing::info!(backend = ?other, "removed rules of an earlier start from the other iptables backend");
    }
    Ok(backend)
}

/// How often the VPC's CIDRs are read again from instance metadata: a CIDR associated with
/// the VPC later must keep pods' addresses too.
pub const VPC_CIDR_INTERVAL: Duration = Duration::from_secs(30);

/// This node's rules as ipamd keeps them: installed at start-up, and again whenever the
/// VPC's CIDRs change.
pub struct NodeFirewall {
    config: FirewallConfig,
    identity: Identity,
    veth_prefix: String,
}

impl NodeFirewall {
    /// Warns once about a mark that clashes with another program's.
    pub fn new(config: FirewallConfig, identity: Identity, veth_prefix: String) -> Self {
        if let Some(other) = config.mark_clash() {
            tracing::warn!(
                mark = config.mark,
                clashes_with = other,
                "AWS_VPC_K8S_CNI_CONNMARK shares bits with another program's mark"
            );
        }
        NodeFirewall {
            config,
            identity,
            veth_prefix,
        }
    }

    /// Installs the rules for `vpc_cidrs`. A failure is logged, not returned: without the
    /// marks and the translation, NodePort/hostPort replies of pods on secondary ENIs and
    /// pods' connections out of the VPC break, which is worth an error in the log, not a
    /// node that cannot run pods at all.
    pub async fn install(&self, vpc_cidrs: &[Ipv4Net]) -> bool {
        let (c, id) = (&self.config, &self.identity);
        let applied = apply(
            c,
            &id.primary_mac,
            id.primary_ip,
            vpc_cidrs,
            &self.veth_prefix,
        );
        match applied.await {
            Ok(backend) => {
                tracing::info!(
                    ?backend,
                    mark = c.mark,
                    snat = c.snat(),
                    node_port_support = c.node_port_support,
                    ?vpc_cidrs,
                    "connmark and snat rules in place"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, ?vpc_cidrs, "connmark and snat rules not installed");
                false
            }
        }
    }

    /// Re-reads the VPC's CIDRs every [`VPC_CIDR_INTERVAL`] until `stop` turns true, and
    /// installs the rules again when the CIDRs changed, or when the rules are not
    /// `installed` yet (start-up failed to). A failed read is logged and tried again.
    pub async fn follow_vpc_cidrs(
        self,
        imds: Imds,
        installed: bool,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut applied = installed.then(|| self.identity.vpc_cidrs.clone());
        while !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(VPC_CIDR_INTERVAL) => {}
                _ = stop.changed() => continue,
            }
            match imds.vpc_cidrs(&self.identity.primary_mac).await {
                Ok(cidrs) if applied.as_ref() != Some(&cidrs) => {
                    if self.install(&cidrs).await {
                        applied = Some(cidrs);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not read the vpc's cidrs"),
            }
        }
    }
}

/// Installs the marks, source NAT and rule 1024 in ipamd's own network namespace (the
/// node's), and returns the backend used.
pub async fn apply(
    config: &FirewallConfig,
    primary_mac: &str,
    primary_ip: Ipv4Addr,
    vpc_cidrs: &[Ipv4Net],
    veth_prefix: &str,
) -> Result<Backend, FirewallError> {
    let nl = Netlink::current()?;
    let mac: MacAddr = primary_mac
        .parse()
        .map_err(|_| FirewallError::NoPrimary(primary_mac.into()))?;
    let primary = nl
        .link_by_mac(mac)
        .await?
        .ok_or_else(|| FirewallError::NoPrimary(primary_mac.into()))?;
    let facts = NodeFacts {
        primary_link: primary.name,
        primary_ip,
        vpc_cidrs: vpc_cidrs.to_vec(),
        veth_prefix: veth_prefix.to_string(),
    };
    // On this thread, not a blocking pool's: the iptables programs inherit the calling
    // thread's network namespace, and a test may have entered one on this thread only.
    let backend = replace_chains(config, &facts)?;
    let rule = Rule {
        priority: Some(CONNMARK_RULE_PRIORITY),
        table: RT_TABLE_MAIN,
        fwmark: Some(config.mark),
        fwmask: Some(config.mark),
        ..Rule::default()
    };
    // Rules at this priority for a mark no longer configured are an earlier start's.
    for old in nl.rules(false).await? {
        let stale = old.priority == Some(CONNMARK_RULE_PRIORITY)
            && old.fwmark.is_some()
            && (old.fwmark != rule.fwmark || !(config.node_port_support || config.snat()));
        if stale {
            nl.delete_rules(&old).await?;
        }
    }
    if config.node_port_support || config.snat() {
        nl.add_rule(&rule).await?;
    }
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            primary_link: "eth0".into(),
            primary_ip: "10.0.0.10".parse().unwrap(),
            vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            veth_prefix: "eni".into(),
        }
    }

    fn config(vars: &[(&str, &str)]) -> Result<FirewallConfig, FirewallError> {
        FirewallConfig::from_lookup(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_are_aws_nodes() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c,
            FirewallConfig {
                node_port_support: true,
                mark: 0x80,
                external_snat: false,
                exclude_snat: vec![],
                snat_ports: SnatPorts::FullyRandom,
            }
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        let c = config(&[(CONNMARK, "0x100")]).unwrap();
        assert_eq!(c.mark, 0x100);
        assert_eq!(config(&[(CONNMARK, "64")]).unwrap().mark, 64);
        let bad = [
            (CONNMARK, "0"),
            (CONNMARK, "mark"),
            (CONNMARK, "0xZZ"),
            (NODE_PORT_SUPPORT, "yes"),
            (EXTERNAL_SNAT, "yes"),
            (EXCLUDE_SNAT_CIDRS, "10.1.0.0/16,nonsense"),
            (EXCLUDE_SNAT_CIDRS, "fd00::/8"),
            (RANDOMIZE_SNAT, "random"),
        ];
        for (name, value) in bad {
            let err = config(&[(name, value)]).unwrap_err().to_string();
            assert!(err.starts_with(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn exclusions_are_a_comma_list_of_networks() {
        let c = config(&[(EXCLUDE_SNAT_CIDRS, " 10.1.0.0/16, 192.168.7.9/24 ,")]).unwrap();
        let want: Vec<Ipv4Net> = vec![
            "10.1.0.0/16".parse().unwrap(),
            "192.168.7.0/24".parse().unwrap(),
        ];
        assert_eq!(c.exclude_snat, want);
        let c = config(&[(EXTERNAL_SNAT, "true"), (RANDOMIZE_SNAT, "none")]).unwrap();
        assert!(!c.snat());
        assert_eq!(c.snat_ports, SnatPorts::Sequential);
    }

    #[test]
    fn pods_off_the_vpc_are_marked_and_translated_except_through_vlans() {
        let c = config(&[(EXCLUDE_SNAT_CIDRS, "10.1.0.0/16,10.0.0.0/16")]).unwrap();
        let doc = restore_document(&c, &facts(), "");
        let lines: Vec<&str> = doc.lines().collect();
        let pos = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("{l} missing from\n{doc}"))
        };
        // NodePort connections and pod egress are marked; replies and egress carry the mark.
        pos("-A VPC-CNI-PREROUTING -i eth0 -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80");
        let egress =
            pos("-A VPC-CNI-PREROUTING -i eni+ -m conntrack --ctstate NEW -j VPC-CNI-EGRESS");
        let restore = pos(
            "-A VPC-CNI-PREROUTING -i eni+ -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80",
        );
        assert!(egress < restore, "the mark is set before it is restored");
        pos(
            "-A VPC-CNI-PREROUTING -i vlan+ -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80",
        );
        // The VPC comes first, an exclusion repeating it is not doubled.
        let vpc = pos("-A VPC-CNI-SNAT -d 10.0.0.0/16 -j RETURN");
        let peer = pos("-A VPC-CNI-SNAT -d 10.1.0.0/16 -j RETURN");
        let vlan = pos("-A VPC-CNI-SNAT -o vlan+ -j RETURN");
        let snat = pos("-A VPC-CNI-SNAT -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.0.10 --random-fully");
        assert!(vlan < snat && vpc < peer && peer < snat);
        assert_eq!(
            doc.matches("-d 10.0.0.0/16").count(),
            2,
            "once per table:\n{doc}"
        );
        pos("-A VPC-CNI-EGRESS -d 10.1.0.0/16 -j RETURN");
        assert!(
            pos("-A VPC-CNI-EGRESS -m addrtype --dst-type LOCAL -j RETURN")
                < pos("-A VPC-CNI-EGRESS -j CONNMARK --set-xmark 0x80/0x80")
        );
        pos("-A POSTROUTING -m comment --comment vpc-cni -j VPC-CNI-SNAT");
        pos("-A PREROUTING -m comment --comment vpc-cni -j VPC-CNI-PREROUTING");
        assert_eq!(doc.matches("COMMIT").count(), 2);
    }

    #[test]
    fn external_snat_leaves_only_the_nodeport_marks() {
        let c = config(&[(EXTERNAL_SNAT, "true"), (RANDOMIZE_SNAT, "hashrandom")]).unwrap();
        let doc = restore_document(&c, &facts(), "");
        assert!(
            !doc.contains("-j SNAT") && !doc.contains("-j VPC-CNI-EGRESS"),
            "{doc}"
        );
        assert!(!doc.contains("-A POSTROUTING"), "{doc}");
        assert!(
            doc.contains(":VPC-CNI-SNAT - [0:0]"),
            "the chain is still emptied:\n{doc}"
        );
        assert!(doc.contains("--set-xmark 0x80/0x80"));
        let c = config(&[(EXTERNAL_SNAT, "true"), (NODE_PORT_SUPPORT, "false")]).unwrap();
        let doc = restore_document(&c, &facts(), "");
        assert!(!doc.contains("-A "), "nothing to install:\n{doc}");
        let c = config(&[(RANDOMIZE_SNAT, "hashrandom")]).unwrap();
        assert!(restore_document(&c, &facts(), "").contains("--to-source 10.0.0.10 --random\n"));
    }

    #[test]
    fn a_restart_replaces_its_jumps_and_leaves_others_alone() {
        let saved = "*mangle\n:PREROUTING ACCEPT [0:0]\n\
            -A PREROUTING -m comment --comment vpc-cni -j VPC-CNI-PREROUTING\n\
            -A PREROUTING -j KUBE-MARK\nCOMMIT\n*nat\n\
            -A POSTROUTING -m comment --comment vpc-cni -j VPC-CNI-SNAT\n\
            -A POSTROUTING -m comment --comment vpc-cni -j VPC-CNI-SNAT\n\
            -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\nCOMMIT\n";
        let doc = restore_document(&config(&[]).unwrap(), &facts(), saved);
        assert_eq!(
            doc.matches("-D PREROUTING -m comment --comment vpc-cni -j VPC-CNI-PREROUTING\n")
                .count(),
            1
        );
        assert_eq!(
            doc.matches("-D POSTROUTING -m comment --comment vpc-cni -j VPC-CNI-SNAT\n")
                .count(),
            2
        );
        assert!(!doc.contains("KUBE"), "{doc}");
        let mangle = doc.split("*nat").next().unwrap();
        assert!(
            !mangle.contains("VPC-CNI-SNAT"),
            "a jump is deleted in its own table"
        );
    }

    #[test]
    fn aws_node_spellings_of_booleans_and_marks_are_accepted() {
        for (value, want) in [("TRUE", true), (" True ", true), ("1", true), ("F", false)] {
            let c = config(&[(EXTERNAL_SNAT, value), (NODE_PORT_SUPPORT, value)]).unwrap();
            assert_eq!(
                (c.external_snat, c.node_port_support),
                (want, want),
                "{value}"
            );
        }
        assert_eq!(config(&[(CONNMARK, "0X80")]).unwrap().mark, 0x80);
        assert_eq!(config(&[(CONNMARK, "0200")]).unwrap().mark, 0o200);
        assert!(config(&[(CONNMARK, "09")]).is_err());
        let c = config(&[(RANDOMIZE_SNAT, " none ")]).unwrap();
        assert_eq!(c.snat_ports, SnatPorts::Sequential);
    }

    #[test]
    fn marks_sharing_bits_with_kube_proxy_or_portmap_are_named() {
        assert_eq!(config(&[]).unwrap().mark_clash(), None);
        let clash = |m: &str| config(&[(CONNMARK, m)]).unwrap().mark_clash();
        assert_eq!(clash("0x4000"), Some("kube-proxy's masquerade mark 0x4000"));
        assert_eq!(
            clash("0xffffffff").map(|w| w.starts_with("kube-proxy")),
            Some(true)
        );
        assert!(clash("0x2080").unwrap().starts_with("portmap"));
        assert_eq!(clash("0x100"), None);
    }

    #[test]
    fn another_programs_jump_to_our_chain_is_left_alone() {
        let saved = "*nat\n-A POSTROUTING -s 10.9.0.0/16 -j VPC-CNI-SNAT\n\
            -A POSTROUTING -m comment --comment vpc-cni -j VPC-CNI-SNAT\nCOMMIT\n";
        let doc = restore_document(&config(&[]).unwrap(), &facts(), saved);
        assert!(!doc.contains("-D POSTROUTING -s 10.9.0.0/16"), "{doc}");
        assert!(doc.contains("-D POSTROUTING -m comment --comment vpc-cni -j VPC-CNI-SNAT"));
    }

    #[test]
    fn the_unused_backend_loses_our_chains_and_jumps_only() {
        let saved = "*mangle\n:PREROUTING ACCEPT [0:0]\n:VPC-CNI-PREROUTING - [0:0]\n\
            :VPC-CNI-EGRESS - [0:0]\n\
            -A PREROUTING -m comment --comment vpc-cni -j VPC-CNI-PREROUTING\n\
            -A PREROUTING -j KUBE-MARK\nCOMMIT\n*nat\n:KUBE-SVC - [0:0]\nCOMMIT\n";
        let doc = removal_document(saved);
        assert_eq!(
            doc,
            "*mangle\n:VPC-CNI-PREROUTING - [0:0]\n:VPC-CNI-EGRESS - [0:0]\n\
             -D PREROUTING -m comment --comment vpc-cni -j VPC-CNI-PREROUTING\n\
             -X VPC-CNI-PREROUTING\n-X VPC-CNI-EGRESS\nCOMMIT\n"
        );
        assert_eq!(removal_document("*nat\n-A POSTROUTING -j X\nCOMMIT\n"), "");
    }

    #[test]
    fn our_own_rules_do_not_decide_the_backend() {
        let ours = "*nat\n-A POSTROUTING -m comment --comment vpc-cni -j VPC-CNI-SNAT\n\
            -A VPC-CNI-SNAT -o vlan+ -j RETURN\n-A VPC-CNI-SNAT -j SNAT --to-source 10.0.0.10\nCOMMIT\n";
        let kube = "*nat\n-A POSTROUTING -j KUBE-POSTROUTING\nCOMMIT\n";
        assert_eq!(
            choose_backend(Some(kube), Some(ours)),
            Some(Backend::Legacy)
        );
    }

    #[test]
    fn aws_nodes_rules_are_removed_on_a_switch_of_image() {
        let saved = "*mangle\n:PREROUTING ACCEPT [0:0]\n\
            -A PREROUTING -i eth0 -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80\n\
            -A PREROUTING -i eni+ -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80\n\
            -A PREROUTING -j KUBE-MARK\nCOMMIT\n\
            *nat\n:POSTROUTING ACCEPT [0:0]\n:AWS-SNAT-CHAIN-0 - [0:0]\n:AWS-CONNMARK-CHAIN-0 - [0:0]\n\
            -A PREROUTING -i eni+ -m comment --comment \"AWS, outbound connections\" -j AWS-CONNMARK-CHAIN-0\n\
            -A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0\n\
            -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
            -A AWS-SNAT-CHAIN-0 -d 10.0.0.0/16 -j RETURN\nCOMMIT\n";
        for doc in [
            restore_document(&config(&[]).unwrap(), &facts(), saved),
            removal_document(saved),
        ] {
            assert_eq!(
                doc.matches("-D PREROUTING -i eth0 -m comment --comment \"AWS, primary ENI\"")
                    .count(),
                1,
                "{doc}"
            );
            assert_eq!(
                doc.matches("-D PREROUTING -i eni+ -m comment --comment \"AWS, ")
                    .count(),
                2,
                "{doc}"
            );
            assert!(
                doc.contains(
                    "-D POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0\n"
                ),
                "{doc}"
            );
            assert!(
                doc.contains(":AWS-SNAT-CHAIN-0 - [0:0]\n")
                    && doc.contains("-X AWS-SNAT-CHAIN-0\n"),
                "{doc}"
            );
            assert!(doc.contains("-X AWS-CONNMARK-CHAIN-0\n"), "{doc}");
            assert!(!doc.contains("KUBE"), "{doc}");
            assert!(
                !doc.contains("-D AWS-SNAT-CHAIN-0"),
                "a deleted chain's rules go with it: {doc}"
            );
        }
    }

    #[test]
    fn the_backend_with_the_nodes_rules_wins() {
        let some = "*nat\n-A POSTROUTING -j KUBE-POSTROUTING\n-A PREROUTING -j KUBE\nCOMMIT\n";
        let one = "*nat\n-A POSTROUTING -j X\nCOMMIT\n";
        assert_eq!(choose_backend(Some(some), Some(one)), Some(Backend::Legacy));
        assert_eq!(choose_backend(Some(one), Some(some)), Some(Backend::Nft));
        assert_eq!(choose_backend(Some(""), Some("")), Some(Backend::Nft));
        assert_eq!(choose_backend(Some(""), None), Some(Backend::Legacy));
        assert_eq!(choose_backend(None, None), None);
    }
}
