//! Branch-ENI (security groups for pods) wiring against real 802.1Q links: the plumbing
//! functions and the `vpc-cni` binary, in namespaces the tests create: a "node" with a veth
//! standing in for the trunk ENI, a pod, and a "fabric" holding the VPC end of the trunk.
//!
//! The host kernel of this project has no 802.1Q, so these tests are ignored in a plain
//! `cargo test` and run inside a User-mode Linux guest by `cargo test -p vpc-cni-tests --test
//! uml_branch_pods`. Run anywhere else with `--ignored`, they fail and say why.

mod common;

use std::process::Command;
use std::sync::{Arc, OnceLock};

use common::cni::{conf, err_code, ok, silent_ok, with_prev, Pod};
use common::server::{BranchAnswer, TestIpamd};
use common::{rules_with_priority, TestNetns};
use serde_json::Value;
use vpc_cni::cni::netconf::SgEnforcingMode;
use vpc_cni::netlink::{Netlink, Netns};
use vpc_cni::plumbing::{
    check_branch_pod, setup_branch_pod, teardown_host, Branch, BranchNetwork, Expected,
    ExpectedBranch, HostTeardown, PodAddress, PodNetwork, Wired,
};

const ENI_MAC: &str = "02:00:00:00:00:b1";
const STRICT: SgEnforcingMode = SgEnforcingMode::Strict;
const STANDARD: SgEnforcingMode = SgEnforcingMode::Standard;

/// Fails the test, loudly, on a kernel that cannot make VLAN links.
fn require_vlan() {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        let ns = TestNetns::new("probe");
        ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
        let out = Command::new("ip")
            .args(["-n", &ns.name, "link", "add", "link", "p0", "name", "p0.5"])
            .args(["type", "vlan", "id", "5"])
            .output()
            .expect("run ip");
        match out.status.success() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        }
    });
    if let Err(e) = probe {
        panic!(
            "this kernel cannot create 802.1Q VLAN links ({e}); these tests run inside a \
             User-mode Linux guest: cargo test -p vpc-cni-tests --test uml_branch_pods"
        );
    }
}

/// A node with a trunk stand-in (`trunk0`, its peer `trunk0p` in the fabric), and a pod.
struct Bed {
    node: TestNetns,
    pod: TestNetns,
    fabric: TestNetns,
    pod_netns: Arc<Netns>,
    host_nl: Netlink,
    pod_nl: Netlink,
    trunk: u32,
}

fn bed(tag: &str) -> Bed {
    require_vlan();
    let node = TestNetns::new(&format!("{tag}-node"));
    let pod = TestNetns::new(&format!("{tag}-pod"));
    let fabric = TestNetns::new(&format!("{tag}-fab"));
    node.ip(&[
        "link", "add", "trunk0", "type", "veth", "peer", "name", "trunk0p",
    ]);
    node.ip(&["link", "set", "trunk0p", "netns", &fabric.name]);
    node.ip(&["link", "set", "trunk0", "up"]);
    fabric.ip(&["link", "set", "trunk0p", "up"]);
    let trunk = index_of(&node, "trunk0");
    let node_netns = Arc::new(Netns::named(&node.name).unwrap());
    let pod_netns = Arc::new(Netns::named(&pod.name).unwrap());
    Bed {
        host_nl: Netlink::in_netns(node_netns).unwrap(),
        pod_nl: Netlink::in_netns(pod_netns.clone()).unwrap(),
        node,
        pod,
        fabric,
        pod_netns,
        trunk,
    }
}

fn index_of(ns: &TestNetns, link: &str) -> u32 {
    let l = ns.link(link).unwrap_or_else(|| panic!("no link {link}"));
    l["ifindex"].as_u64().unwrap() as u32
}

fn branch_net(b: &Bed, veth: &str, ip: &str, vlan: u16, mode: SgEnforcingMode) -> BranchNetwork {
    let pod = PodNetwork {
        host_veth: veth.into(),
        ifname: "eth0".into(),
        ip: ip.parse().unwrap(),
        table: 0,
        mtu: 9001,
    };
    let branch = Branch {
        vlan,
        eni_mac: ENI_MAC.parse().unwrap(),
        gateway: "10.0.1.1".parse().unwrap(),
        parent: b.trunk,
    };
    BranchNetwork::new(pod, branch, mode)
}

fn expected(n: &BranchNetwork, wired: Wired) -> ExpectedBranch {
    ExpectedBranch {
        pod: Expected {
            host_veth: n.pod.host_veth.clone(),
            host_mac: Some(wired.host_mac),
            ifname: n.pod.ifname.clone(),
            pod_mac: Some(wired.pod_mac),
            ip: n.pod.ip,
            table: None,
        },
        vlan: n.branch.vlan,
        eni_mac: Some(n.branch.eni_mac),
        gateway: Some(n.branch.gateway),
        mode: n.mode,
    }
}

fn teardown_of(n: &BranchNetwork) -> HostTeardown {
    HostTeardown {
        host_veths: vec![n.pod.host_veth.clone()],
        addresses: vec![PodAddress {
            ip: n.pod.ip,
            vlan: Some(n.branch.vlan),
        }],
    }
}

fn detailed_link(ns: &TestNetns, name: &str) -> Option<Value> {
    let links = common::array(ns.ip_json(&["-d", "link", "show"]));
    links.into_iter().find(|l| l["ifname"] == name)
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"].as_array().unwrap().iter().any(|f| f == flag)
}

/// `ip rule` entries at `prio` as (selector, table) pairs, e.g. ("iif vlan.eth.3", "103").
fn rules_at(ns: &TestNetns, prio: u64) -> Vec<(String, String)> {
    let rules = rules_with_priority(&ns.rules(), prio);
    let mut out: Vec<(String, String)> = rules
        .iter()
        .map(|r| {
            let selector = match (&r["iif"], &r["src"], &r["dst"]) {
                (Value::String(iif), _, _) => format!("iif {iif}"),
                (_, Value::String(src), _) if src != "all" => format!("from {src}"),
                (_, _, Value::String(dst)) => format!("to {dst}"),
                _ => "all".into(),
            };
            (selector, r["table"].as_str().unwrap_or("").to_string())
        })
        .collect();
    out.sort();
    out
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

/// Routes of a table as "dst dev [via gw]" strings, sorted; a table the kernel never had
/// is empty.
fn table(ns: &TestNetns, table: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-j", "route", "show", "table", table])
        .output()
        .expect("run ip");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("does not exist") {
        return Vec::new();
    }
    assert!(
        out.status.success(),
        "ip route show table {table}: {stderr}"
    );
    let routes: Value = match out.stdout.is_empty() {
        true => Value::Array(Vec::new()),
        false => serde_json::from_slice(&out.stdout).expect("ip -j route json"),
    };
    let mut out: Vec<String> = common::array(routes)
        .iter()
        .map(|r| {
            let mut s = format!(
                "{} dev {}",
                r["dst"].as_str().unwrap(),
                r["dev"].as_str().unwrap()
            );
            if let Some(gw) = r["gateway"].as_str() {
                s += &format!(" via {gw}");
            }
            s
        })
        .collect();
    out.sort();
    out
}

/// Nothing of a branch pod is left on the node.
fn assert_branch_gone(node: &TestNetns, veth: &str, vlan: u16, ip: &str) {
    let link = format!("vlan.eth.{vlan}");
    assert!(node.link(&link).is_none(), "{link} left");
    assert!(node.link(veth).is_none(), "host veth {veth} left");
    for prio in [10, 512, 1536] {
        assert!(
            rules_at(node, prio).is_empty(),
            "rules {prio} left: {:?}",
            node.rules()
        );
    }
    let t = (100 + vlan).to_string();
    assert!(
        table(node, &t).is_empty(),
        "table {t} left: {:?}",
        table(node, &t)
    );
    assert!(
        !node.routes("main").iter().any(|r| r["dst"] == ip),
        "main route to {ip} left"
    );
}

/// The VPC end of the trunk: VLAN `vlan` in the fabric carries the subnet gateway, and the
/// branch address is known by its ENI's MAC, as EC2 knows it without ARP.
fn serve_subnet(b: &Bed, vlan: u16, pod_ip: &str) {
    let id = vlan.to_string();
    let f = &b.fabric;
    f.ip(&[
        "link", "add", "link", "trunk0p", "name", "v", "type", "vlan", "id", &id,
    ]);
    f.ip(&["addr", "add", "10.0.1.1/24", "dev", "v"]);
    f.ip(&["link", "set", "v", "up"]);
    f.ip(&[
        "neigh",
        "replace",
        pod_ip,
        "lladdr",
        ENI_MAC,
        "dev",
        "v",
        "nud",
        "permanent",
    ]);
    common::run(
        "ip",
        &[
            "netns",
            "exec",
            &b.node.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    );
}

fn ping(from: &TestNetns, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &from.name, "ping", "-c1", "-W2", to])
        .output()
        .expect("run ping")
        .status
        .success()
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn strict_pod_is_wired_checked_and_torn_down() {
    let b = bed("strict");
    let n = branch_net(&b, "vlanc440f455693", "10.0.1.10", 3, STRICT);
    let wired = setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();

    let vlan = detailed_link(&b.node, "vlan.eth.3").expect("vlan link");
    assert_eq!(vlan["linkinfo"]["info_kind"], "vlan");
    assert_eq!(vlan["linkinfo"]["info_data"]["id"], 3);
    assert_eq!(vlan["linkinfo"]["info_data"]["protocol"], "802.1Q");
    assert_eq!(vlan["link"], "trunk0");
    assert_eq!(vlan["address"], ENI_MAC);
    assert!(has_flag(&vlan, "UP"));
    let addrs = b.node.ip_json(&["addr", "show", "dev", "vlan.eth.3"]);
    assert_eq!(
        addrs[0]["addr_info"],
        Value::Array(vec![]),
        "no address on the vlan link"
    );

    assert_eq!(
        table(&b.node, "103"),
        [
            "10.0.1.1 dev vlan.eth.3",
            "10.0.1.10 dev vlanc440f455693",
            "default dev vlan.eth.3 via 10.0.1.1",
        ]
    );
    assert_eq!(
        rules_at(&b.node, 10),
        [
            pair("iif vlan.eth.3", "103"),
            pair("iif vlanc440f455693", "103")
        ]
    );
    assert!(rules_at(&b.node, 512).is_empty() && rules_at(&b.node, 1536).is_empty());
    assert!(
        b.node.routes("main").is_empty(),
        "strict: no pod route in main"
    );
    let pod_routes = table(&b.pod, "main");
    assert_eq!(
        pod_routes,
        ["169.254.1.1 dev eth0", "default dev eth0 via 169.254.1.1"]
    );

    check_branch_pod(&b.host_nl, &b.pod_nl, &expected(&n, wired))
        .await
        .expect("fresh pod checks clean");
    teardown_host(&b.host_nl, &teardown_of(&n)).await.unwrap();
    assert_branch_gone(&b.node, &n.pod.host_veth, 3, "10.0.1.10");
    assert!(
        b.pod.link("eth0").is_none(),
        "the pod end goes with the host veth"
    );
    teardown_host(&b.host_nl, &teardown_of(&n))
        .await
        .expect("second teardown is a no-op");
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn standard_pod_is_wired_checked_and_torn_down() {
    let b = bed("std");
    let n = branch_net(&b, "enic440f455693", "10.0.1.10", 3, STANDARD);
    let wired = setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();

    assert!(detailed_link(&b.node, "vlan.eth.3").is_some());
    assert_eq!(
        table(&b.node, "103"),
        [
            "10.0.1.1 dev vlan.eth.3",
            "default dev vlan.eth.3 via 10.0.1.1"
        ]
    );
    assert_eq!(table(&b.node, "main"), ["10.0.1.10 dev enic440f455693"]);
    assert!(rules_at(&b.node, 10).is_empty());
    assert_eq!(rules_at(&b.node, 512), [pair("to 10.0.1.10", "main")]);
    assert_eq!(rules_at(&b.node, 1536), [pair("from 10.0.1.10", "103")]);

    check_branch_pod(&b.host_nl, &b.pod_nl, &expected(&n, wired))
        .await
        .expect("fresh pod checks clean");
    let as_strict = ExpectedBranch {
        mode: STRICT,
        ..expected(&n, wired)
    };
    let err = check_branch_pod(&b.host_nl, &b.pod_nl, &as_strict)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in table 103 is missing"), "{err}");

    teardown_host(&b.host_nl, &teardown_of(&n)).await.unwrap();
    assert_branch_gone(&b.node, &n.pod.host_veth, 3, "10.0.1.10");
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn pod_reaches_its_subnet_gateway_through_the_vlan_in_both_modes() {
    for (mode, veth) in [(STRICT, "vlanc440f455693"), (STANDARD, "enic440f455693")] {
        let b = bed("path");
        serve_subnet(&b, 3, "10.0.1.10");
        let n = branch_net(&b, veth, "10.0.1.10", 3, mode);
        setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
            .await
            .unwrap();
        assert!(
            ping(&b.pod, "10.0.1.1"),
            "{mode:?}: pod -> gateway over vlan 3"
        );
        assert!(
            ping(&b.fabric, "10.0.1.10"),
            "{mode:?}: gateway -> pod over vlan 3"
        );

        // Untagged, or on another VLAN, nothing reaches the pod.
        teardown_host(&b.host_nl, &teardown_of(&n)).await.unwrap();
        assert!(
            !ping(&b.fabric, "10.0.1.10"),
            "{mode:?}: pod unreachable after teardown"
        );
    }
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn teardown_removes_both_modes_state() {
    let b = bed("both");
    let n = branch_net(&b, "vlanc440f455693", "10.0.1.10", 3, STRICT);
    setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();
    // What a standard-mode incarnation of the same pod would have left.
    b.node.ip(&[
        "rule",
        "add",
        "to",
        "10.0.1.10",
        "lookup",
        "main",
        "prio",
        "512",
    ]);
    b.node.ip(&[
        "rule",
        "add",
        "from",
        "10.0.1.10",
        "lookup",
        "103",
        "prio",
        "1536",
    ]);
    b.node.ip(&[
        "route",
        "add",
        "10.0.1.10/32",
        "dev",
        &n.pod.host_veth,
        "scope",
        "link",
    ]);
    teardown_host(&b.host_nl, &teardown_of(&n)).await.unwrap();
    assert_branch_gone(&b.node, &n.pod.host_veth, 3, "10.0.1.10");
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn recreated_pod_replaces_the_rules_and_vlan_of_its_predecessor() {
    let b = bed("stale");
    let veth = "vlanc440f455693";
    let old = branch_net(&b, veth, "10.0.1.20", 1, STRICT);
    setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &old)
        .await
        .unwrap();
    // The old sandbox was force-deleted without a DEL (its veth went, its rules stayed); the
    // new one has the same name, and its address had a stale rule.
    b.pod.ip(&["link", "del", "eth0"]);
    b.node.ip(&[
        "rule",
        "add",
        "to",
        "10.0.1.21",
        "lookup",
        "main",
        "prio",
        "512",
    ]);
    b.node
        .ip(&["link", "add", veth, "type", "veth", "peer", "name", "old0"]);

    let new = branch_net(&b, veth, "10.0.1.21", 2, STRICT);
    let wired = setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &new)
        .await
        .unwrap();
    assert!(b.node.link("old0").is_none(), "leftover veth replaced");
    assert_eq!(
        rules_at(&b.node, 10),
        [
            pair("iif vlan.eth.2", "102"),
            pair(&format!("iif {veth}"), "102")
        ],
        "the old iif rules, and with them table 101, are gone"
    );
    assert!(
        rules_at(&b.node, 512).is_empty(),
        "stale rule to the address removed"
    );
    assert!(
        b.node.link("vlan.eth.1").is_none(),
        "unused vlan link of the old pod removed"
    );
    assert!(table(&b.node, "101").is_empty());
    check_branch_pod(&b.host_nl, &b.pod_nl, &expected(&new, wired))
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn leftover_vlan_link_is_replaced() {
    let b = bed("leftvlan");
    b.node.ip(&[
        "link", "add", "old0", "type", "veth", "peer", "name", "old1",
    ]);
    b.node.ip(&[
        "link",
        "add",
        "link",
        "old0",
        "name",
        "vlan.eth.4",
        "type",
        "vlan",
        "id",
        "9",
    ]);
    let n = branch_net(&b, "vlanc440f455693", "10.0.1.10", 4, STRICT);
    setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();
    let vlan = detailed_link(&b.node, "vlan.eth.4").unwrap();
    assert_eq!(vlan["link"], "trunk0");
    assert_eq!(vlan["linkinfo"]["info_data"]["id"], 4);
    assert_eq!(vlan["address"], ENI_MAC);
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn check_names_branch_drift() {
    let b = bed("drift");
    let n = branch_net(&b, "vlanc440f455693", "10.0.1.10", 3, STRICT);
    let wired = setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();
    let want = expected(&n, wired);
    let drift = || async {
        check_branch_pod(&b.host_nl, &b.pod_nl, &want)
            .await
            .expect_err("drift")
            .to_string()
    };

    b.node
        .ip(&["rule", "del", "iif", "vlanc440f455693", "prio", "10"]);
    assert_eq!(
        drift().await,
        "host rule 10: from all iif vlanc440f455693 lookup 103 is missing"
    );
    b.node.ip(&[
        "rule",
        "add",
        "iif",
        "vlanc440f455693",
        "lookup",
        "103",
        "prio",
        "10",
    ]);

    b.node.ip(&["route", "del", "default", "table", "103"]);
    assert_eq!(
        drift().await,
        "table 103 has no default route dev vlan.eth.3"
    );
    assert!(table(&b.node, "103").len() == 2, "check must not repair");
    b.node.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.0.1.1",
        "dev",
        "vlan.eth.3",
        "table",
        "103",
    ]);

    b.node
        .ip(&["link", "set", "vlan.eth.3", "address", "02:00:00:00:00:b2"]);
    assert!(drift()
        .await
        .contains("vlan interface vlan.eth.3 has mac 02:00:00:00:00:b2"));
    b.node
        .ip(&["link", "set", "vlan.eth.3", "address", ENI_MAC]);
    check_branch_pod(&b.host_nl, &b.pod_nl, &want)
        .await
        .unwrap();

    // 802.1Q takes a VLAN link down with its trunk and up again with it, but the kernel
    // flushed the routes through it on the way down: the pod stays cut off.
    b.node.ip(&["link", "set", "trunk0", "down"]);
    assert_eq!(drift().await, "vlan interface vlan.eth.3 is down");
    b.node.ip(&["link", "set", "trunk0", "up"]);
    assert_eq!(
        drift().await,
        "table 103 has no default route dev vlan.eth.3"
    );

    b.node.ip(&["link", "del", "vlan.eth.3"]);
    b.node.ip(&[
        "link",
        "add",
        "vlan.eth.3",
        "address",
        ENI_MAC,
        "up",
        "type",
        "veth",
    ]);
    assert!(drift().await.contains("is not 802.1Q id 3 (kind veth"));
    b.node.ip(&["link", "del", "vlan.eth.3"]);
    assert_eq!(drift().await, "vlan interface vlan.eth.3 is missing");
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn failed_vlan_wiring_is_undone() {
    let b = bed("undo");
    // 802.1Q refuses to raise a VLAN link on a trunk that is down: the failure comes after
    // the veth, the pod side and the VLAN link exist.
    b.node.ip(&["link", "set", "trunk0", "down"]);
    let n = branch_net(&b, "vlanc440f455693", "10.0.1.10", 3, STRICT);
    let err = setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("set vlan.eth.3 up") && err.ends_with("network is down"),
        "{err}"
    );
    assert_branch_gone(&b.node, &n.pod.host_veth, 3, "10.0.1.10");
    assert!(b.pod.link("eth0").is_none());

    // Another link already holds VLAN id 3 on the trunk: creation itself fails.
    b.node.ip(&["link", "set", "trunk0", "up"]);
    b.node.ip(&[
        "link", "add", "link", "trunk0", "name", "other3", "type", "vlan", "id", "3",
    ]);
    let err = setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("create vlan.eth.3"), "{err}");
    assert!(
        b.node.link("other3").is_some(),
        "rollback keeps what it did not make"
    );
    assert!(b.node.link(&n.pod.host_veth).is_none() && b.pod.link("eth0").is_none());
    assert!(rules_at(&b.node, 10).is_empty());
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn late_teardown_leaves_a_vlan_another_pod_now_uses() {
    let b = bed("late");
    let live = branch_net(&b, "vlanaaaaaaaaaaa", "10.0.1.11", 3, STRICT);
    let wired = setup_branch_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &live)
        .await
        .unwrap();
    // A DEL replayed for an earlier pod that had VLAN 3 and another name and address.
    let gone = HostTeardown {
        host_veths: vec!["vlanbbbbbbbbbbb".into()],
        addresses: vec![PodAddress {
            ip: "10.0.1.10".parse().unwrap(),
            vlan: Some(3),
        }],
    };
    teardown_host(&b.host_nl, &gone).await.unwrap();
    check_branch_pod(&b.host_nl, &b.pod_nl, &expected(&live, wired))
        .await
        .expect("the live pod keeps its vlan, table and rules");
}

// The binary, as a runtime drives it, against a scripted ipamd that answers with a branch ENI.

fn branch_ipamd(b: &Bed, pool: &[&str], vlan: i32) -> TestIpamd {
    let ipamd = TestIpamd::start(pool);
    let parent = b.trunk as i32;
    ipamd.with(|s| {
        s.branch = Some(BranchAnswer {
            vlan,
            eni_mac: ENI_MAC.into(),
            gateway: String::new(),
            parent_index: parent,
            subnet: "10.0.1.0/24".into(),
        })
    });
    ipamd
}

fn pod_of<'a>(b: &'a Bed, container_id: &str) -> Pod<'a> {
    Pod {
        node: &b.node,
        netns: b.pod.path(),
        container_id: container_id.into(),
        args: common::cni::KUBELET_ARGS.into(),
    }
}

fn branch_conf(version: &str, ipamd: &TestIpamd, mode: &str) -> Value {
    let mut c = conf(version, ipamd);
    c["podSGEnforcingMode"] = mode.into();
    c
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn binary_adds_checks_and_deletes_branch_pods() {
    let cases = [
        ("strict", "vlan", "0.4.0"),
        ("standard", "eni", "1.0.0"),
        ("strict", "vlan", "1.1.0"),
    ];
    for (mode, prefix, version) in cases {
        let b = bed("bin");
        serve_subnet(&b, 3, "10.0.1.10");
        let ipamd = branch_ipamd(&b, &["10.0.1.10"], 3);
        let pod = pod_of(&b, "c-sgp");
        let c = branch_conf(version, &ipamd, mode);
        let veth = vpc_cni::names::host_veth_name(prefix, "ns1", "pod-a");

        let result = ok(&pod.run("ADD", &c)).clone();
        let ifaces = &result["interfaces"];
        assert_eq!(ifaces[0]["name"], veth.as_str(), "{mode}");
        assert_eq!(ifaces[1]["name"], "eth0");
        assert_eq!(ifaces[2]["mac"], "3", "record carries the vlan id");
        assert_eq!(ifaces[3]["name"], "vlan.eth.3");
        assert_eq!(ifaces[3]["mac"], ENI_MAC);
        assert_eq!(result["ips"][0]["address"], "10.0.1.10/32");
        assert_eq!(result["ips"][0]["gateway"], "10.0.1.1");
        assert!(ping(&b.pod, "10.0.1.1"), "{mode}: pod reaches its gateway");
        let want_rules = match mode {
            "strict" => (2, 0),
            _ => (0, 1),
        };
        let got = (rules_at(&b.node, 10).len(), rules_at(&b.node, 1536).len());
        assert_eq!(got, want_rules, "{mode}");

        silent_ok(&pod.run("CHECK", &with_prev(c.clone(), &result)));
        // A mode change applies to new pods: this one still checks as wired.
        let flipped = match mode {
            "strict" => "standard",
            _ => "strict",
        };
        let other = branch_conf(version, &ipamd, flipped);
        silent_ok(&pod.run("CHECK", &with_prev(other.clone(), &result)));
        b.node.ip(&["route", "del", "default", "table", "103"]);
        let out = pod.run("CHECK", &with_prev(c.clone(), &result));
        assert_eq!(err_code(&out), 103, "{mode}");
        let details = out.json.unwrap()["details"].as_str().unwrap().to_string();
        assert!(
            details.contains("table 103 has no default route"),
            "{details}"
        );

        // DEL under the other mode's config still removes everything; ipamd is told so the
        // branch can go back to its warm pool.
        let before = ipamd.dels().len();
        silent_ok(&pod.run("DEL", &with_prev(other.clone(), &result)));
        assert_branch_gone(&b.node, &veth, 3, "10.0.1.10");
        assert!(b.pod.link("eth0").is_none());
        assert_eq!(
            ipamd.dels().len(),
            before + 1,
            "DEL tells ipamd the branch is free"
        );
        silent_ok(&pod.run("DEL", &with_prev(other, &result)));
    }
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn binary_del_without_netns_removes_host_state() {
    let mut b = bed("binempty");
    let ipamd = branch_ipamd(&b, &["10.0.1.12"], 5);
    let pod = pod_of(&b, "c-gone");
    let c = branch_conf("1.0.0", &ipamd, "strict");
    let result = ok(&pod.run("ADD", &c)).clone();
    let veth = vpc_cni::names::host_veth_name("vlan", "ns1", "pod-a");
    assert!(b.node.link("vlan.eth.5").is_some());

    b.pod.delete();
    let empty = Pod {
        netns: String::new(),
        ..pod_of(&b, "c-gone")
    };
    silent_ok(&empty.run("DEL", &with_prev(c, &result)));
    assert_branch_gone(&b.node, &veth, 5, "10.0.1.12");
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn binary_failed_branch_wiring_releases_the_address() {
    let b = bed("binfail");
    let ipamd = branch_ipamd(&b, &["10.0.1.13"], 3);
    b.node.ip(&["link", "set", "trunk0", "down"]);
    let pod = pod_of(&b, "c-fail");
    let out = pod.run("ADD", &branch_conf("1.0.0", &ipamd, "strict"));
    assert_eq!(err_code(&out), 101);
    let json = out.json.unwrap();
    assert_eq!(json["msg"], "add command: failed to setup network");
    assert!(
        json["details"].as_str().unwrap().contains("vlan.eth.3"),
        "{json}"
    );
    let dels = ipamd.dels();
    assert_eq!(dels.len(), 1);
    assert_eq!(dels[0].reason, "SetupNSFailed");
    assert_eq!(ipamd.allocated(), 0);
    let veth = vpc_cni::names::host_veth_name("vlan", "ns1", "pod-a");
    assert_branch_gone(&b.node, &veth, 3, "10.0.1.13");
    assert!(b.pod.link("eth0").is_none());
}

#[tokio::test]
#[ignore = "needs 802.1Q: runs in a UML guest via vpc-cni-tests' uml_branch_pods"]
async fn binary_refuses_an_unusable_vlan_before_wiring() {
    let b = bed("binbad");
    for vlan in [4095, 154] {
        let ipamd = branch_ipamd(&b, &["10.0.1.14"], vlan);
        let out = pod_of(&b, "c-bad").run("ADD", &branch_conf("1.0.0", &ipamd, "strict"));
        assert_eq!(err_code(&out), 100, "{vlan}");
        let details = out.json.unwrap()["details"].as_str().unwrap().to_string();
        assert!(details.contains("PodVlanId: vlan id"), "{details}");
        assert_eq!(
            ipamd.dels()[0].reason,
            "SetupNSFailed",
            "address given back"
        );
        assert!(b.pod.link("eth0").is_none());
        assert!(
            b.node.links().len() == 2,
            "only lo and the trunk: {:?}",
            b.node.links()
        );
    }
}
