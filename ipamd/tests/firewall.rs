//! The node's marks and source NAT, installed by `firewall::apply` in throwaway namespaces and
//! read back with iptables-save and `ip rule`. Needs root and both iptables backends (Debian's
//! `iptables` package); fails, never skips, without them.

use std::process::Command;

use ipamd::firewall::{self, Backend, FirewallConfig};
use ipnet::Ipv4Net;
use vpc_cni::netlink::Netns;

const MAC: &str = "02:aa:00:00:00:01";

/// A namespace with a link "eth0" carrying the primary ENI's MAC; deleted on drop.
struct Node {
    name: String,
}

impl Node {
    fn new(tag: &str) -> Self {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test needs root to create network namespaces"
        );
        let name = format!("ipamdfw-{tag}-{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let node = Node { name };
        node.exec(&[
            "ip", "link", "add", "eth0", "address", MAC, "type", "veth", "peer", "name", "peer0",
        ]);
        node
    }

    fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run("ip", &full)
    }

    fn apply(&self, vars: &[(&str, &str)]) -> Backend {
        let config = FirewallConfig::from_lookup(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        let vpc: Vec<Ipv4Net> = vec!["10.0.0.0/16".parse().unwrap()];
        let netns = Netns::named(&self.name).unwrap();
        netns
            .run(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(firewall::apply(
                    &config,
                    MAC,
                    "10.0.0.10".parse().unwrap(),
                    &vpc,
                    "eni",
                ))
            })
            .unwrap()
            .unwrap()
    }

    fn saved(&self, backend: Backend) -> String {
        let program = match backend {
            Backend::Legacy => "iptables-legacy-save",
            Backend::Nft => "iptables-nft-save",
        };
        self.exec(&[program])
    }

    fn has_rule_1024(&self) -> bool {
        self.exec(&["ip", "rule", "show", "priority", "1024"])
            .contains("fwmark 0x80/0x80 lookup main")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// `saved` has `times` lines containing `needle`.
fn expect(saved: &str, needle: &str, times: usize) {
    assert_eq!(count(saved, needle), times, "{needle:?} in\n{saved}");
}

#[test]
fn a_fresh_node_gets_snat_and_marks_once_however_often_ipamd_starts() {
    let node = Node::new("fresh");
    let backend = node.apply(&[]);
    assert_eq!(
        backend,
        Backend::Nft,
        "a node without rules uses the nft backend"
    );
    node.apply(&[]);
    let saved = node.saved(backend);
    expect(&saved, "-j VPC-CNI-SNAT", 1);
    expect(&saved, "-j VPC-CNI-PREROUTING", 1);
    expect(&saved, "--to-source 10.0.0.10 --random-fully", 1);
    expect(&saved, "-A VPC-CNI-SNAT -d 10.0.0.0/16 -j RETURN", 1);
    expect(&saved, "-A VPC-CNI-SNAT -o vlan+ -j RETURN", 1);
    expect(&saved, "-A VPC-CNI-PREROUTING -i eth0 ", 1);
    assert!(node.has_rule_1024());
    assert!(
        node.saved(Backend::Legacy)
            .lines()
            .all(|l| !l.starts_with("-A")),
        "nothing goes to the other backend"
    );
}

#[test]
fn a_node_whose_rules_are_legacy_gets_legacy_rules() {
    let node = Node::new("legacy");
    node.exec(&[
        "iptables-legacy",
        "-t",
        "filter",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "9",
        "-j",
        "ACCEPT",
    ]);
    assert_eq!(node.apply(&[]), Backend::Legacy);
    let saved = node.saved(Backend::Legacy);
    expect(&saved, "--to-source 10.0.0.10", 1);
    assert!(
        saved.contains("--dport 9 -j ACCEPT"),
        "another program's rule is kept: {saved}"
    );
}

#[test]
fn external_snat_removes_the_translation_and_a_restart_keeps_other_rules() {
    let node = Node::new("extsnat");
    node.apply(&[]);
    node.exec(&[
        "iptables-nft",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "eth0",
        "-j",
        "MASQUERADE",
    ]);
    node.apply(&[
        ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
        ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "192.168.0.0/16"),
    ]);
    let saved = node.saved(Backend::Nft);
    expect(&saved, "-j SNAT", 0);
    expect(&saved, "-j VPC-CNI-SNAT", 0);
    assert_eq!(
        count(&saved, "-j MASQUERADE"),
        1,
        "another program's rule is kept: {saved}"
    );
    assert_eq!(
        count(&saved, "--set-xmark 0x80/0x80"),
        1,
        "NodePort marks stay: {saved}"
    );
    assert!(node.has_rule_1024());

    node.apply(&[
        ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
        ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false"),
    ]);
    let saved = node.saved(Backend::Nft);
    expect(&saved, "-j VPC-CNI-", 0);
    assert!(!node.has_rule_1024(), "no mark, no rule 1024");

    node.apply(&[
        ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "192.168.0.0/16"),
        ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "none"),
    ]);
    let saved = node.saved(Backend::Nft);
    expect(&saved, "-A VPC-CNI-SNAT -d 192.168.0.0/16 -j RETURN", 1);
    expect(&saved, "-A VPC-CNI-EGRESS -d 192.168.0.0/16 -j RETURN", 1);
    assert!(
        saved.contains("--to-source 10.0.0.10\n") || saved.contains("--to-source 10.0.0.10\r"),
        "{saved}"
    );
    assert!(node.has_rule_1024());
}

#[test]
fn switching_backend_removes_what_the_other_one_still_holds() {
    let node = Node::new("switch");
    assert_eq!(node.apply(&[]), Backend::Nft);
    // Another program (kube-proxy, say) turns out to live in the legacy backend.
    for port in ["1", "2", "3"] {
        node.exec(&[
            "iptables-legacy",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            port,
            "-j",
            "ACCEPT",
        ]);
    }
    let backend = node.apply(&[("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")]);
    assert_eq!(backend, Backend::Legacy);
    let nft = node.saved(Backend::Nft);
    assert!(!nft.contains("VPC-CNI-"), "left in nft:\n{nft}");
    let legacy = node.saved(Backend::Legacy);
    expect(&legacy, "-j SNAT", 0);
    expect(&legacy, "--set-xmark 0x80/0x80", 1);
    // ipamd's own rules, now in legacy, do not decide the next choice.
    assert_eq!(node.apply(&[]), Backend::Legacy);
    expect(&node.saved(Backend::Legacy), "-j SNAT", 1);
}

#[test]
fn rule_1024_follows_the_configured_mark() {
    let node = Node::new("marks");
    let rules = || node.exec(&["ip", "rule", "show", "priority", "1024"]);
    node.apply(&[("AWS_VPC_K8S_CNI_CONNMARK", "0x100")]);
    assert_eq!(
        rules().trim(),
        "1024:\tfrom all fwmark 0x100/0x100 lookup main"
    );
    node.apply(&[]);
    assert_eq!(
        rules().trim(),
        "1024:\tfrom all fwmark 0x80/0x80 lookup main"
    );
    node.apply(&[
        ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
        ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false"),
    ]);
    assert_eq!(rules().trim(), "", "nothing marks, so no rule");
}

#[test]
fn aws_nodes_rules_go_when_ipamd_takes_over() {
    let node = Node::new("awsnode");
    let ipt = |args: &[&str]| {
        let mut full = vec!["iptables-nft"];
        full.extend_from_slice(args);
        node.exec(&full);
    };
    let comment = |c: &'static str| ["-m", "comment", "--comment", c];
    ipt(&["-t", "nat", "-N", "AWS-SNAT-CHAIN-0"]);
    ipt(&[
        "-t",
        "nat",
        "-A",
        "AWS-SNAT-CHAIN-0",
        "-d",
        "10.0.0.0/16",
        "-j",
        "RETURN",
    ]);
    let mut jump = vec!["-t", "nat", "-A", "POSTROUTING"];
    jump.extend(comment("AWS SNAT CHAIN"));
    jump.extend(["-j", "AWS-SNAT-CHAIN-0"]);
    ipt(&jump);
    let mut mark = vec!["-t", "mangle", "-A", "PREROUTING", "-i", "eth0"];
    mark.extend(comment("AWS, primary ENI"));
    mark.extend(["-j", "CONNMARK", "--set-xmark", "0x80/0x80"]);
    ipt(&mark);
    ipt(&[
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "eth9",
        "-j",
        "MASQUERADE",
    ]);

    node.apply(&[]);
    let saved = node.saved(Backend::Nft);
    assert!(!saved.contains("AWS"), "aws-node's rules left:\n{saved}");
    expect(&saved, "-j MASQUERADE", 1);
    expect(&saved, "-j VPC-CNI-SNAT", 1);
}
