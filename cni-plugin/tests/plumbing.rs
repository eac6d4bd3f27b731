//! Pod wiring, check and teardown against real namespaces: a "node" namespace standing in
//! for the host and a pod namespace, both created and removed by the test.

mod common;

use std::sync::Arc;

use common::{rules_with_priority, TestNetns};
use serde_json::Value;
use vpc_cni::netlink::{Netlink, Netns};
use vpc_cni::plumbing::{
    check_pod, delete_pod_link, setup_pod, teardown_host, Expected, HostTeardown, PodAddress,
    PodNetwork, Wired,
};

struct Bed {
    node: TestNetns,
    pod: TestNetns,
    pod_netns: Arc<Netns>,
    host_nl: Netlink,
    pod_nl: Netlink,
}

fn bed(tag: &str) -> Bed {
    let node = TestNetns::new(&format!("{tag}-node"));
    let pod = TestNetns::new(&format!("{tag}-pod"));
    let node_netns = Arc::new(Netns::named(&node.name).unwrap());
    let pod_netns = Arc::new(Netns::named(&pod.name).unwrap());
    let host_nl = Netlink::in_netns(node_netns).unwrap();
    let pod_nl = Netlink::in_netns(pod_netns.clone()).unwrap();
    Bed {
        node,
        pod,
        pod_netns,
        host_nl,
        pod_nl,
    }
}

fn net(ip: &str, table: u32) -> PodNetwork {
    PodNetwork {
        host_veth: "enic440f455693".into(),
        ifname: "eth0".into(),
        ip: ip.parse().unwrap(),
        table,
        mtu: 9001,
    }
}

fn expected(n: &PodNetwork, wired: Wired) -> Expected {
    Expected {
        host_veth: n.host_veth.clone(),
        host_mac: Some(wired.host_mac),
        ifname: n.ifname.clone(),
        pod_mac: Some(wired.pod_mac),
        ip: n.ip,
        table: Some(n.table),
    }
}

fn teardown_of(n: &PodNetwork) -> HostTeardown {
    HostTeardown {
        host_veths: vec![n.host_veth.clone()],
        addresses: vec![PodAddress {
            ip: n.ip,
            vlan: None,
        }],
    }
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"].as_array().unwrap().iter().any(|f| f == flag)
}

fn assert_nothing_left(b: &Bed, n: &PodNetwork) {
    assert!(b.node.link(&n.host_veth).is_none(), "host veth left");
    assert!(b.pod.link(&n.ifname).is_none(), "pod interface left");
    let rules = b.node.rules();
    assert!(rules_with_priority(&rules, 512).is_empty(), "{rules:?}");
    assert!(rules_with_priority(&rules, 1536).is_empty(), "{rules:?}");
    let ip = n.ip.to_string();
    assert!(
        !b.node
            .routes("main")
            .iter()
            .any(|r| r["dst"] == ip.as_str()),
        "host route left"
    );
}

#[tokio::test]
async fn wires_every_object_then_tears_down_without_trace() {
    let b = bed("wire");
    let n = net("10.0.0.21", 3);
    let wired = setup_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();

    let host = b.node.link(&n.host_veth).expect("host veth");
    assert_eq!(host["address"], wired.host_mac.to_string());
    assert_eq!(host["mtu"], 9001);
    assert!(has_flag(&host, "UP"));
    let sysctl = |name: &str| {
        let path = format!("/proc/sys/net/ipv6/conf/{}/{name}", n.host_veth);
        common::run("ip", &["netns", "exec", &b.node.name, "cat", &path])
            .trim()
            .to_string()
    };
    assert_eq!(sysctl("accept_ra"), "0");
    assert_eq!(sysctl("accept_redirects"), "1");
    assert_eq!(sysctl("forwarding"), "0");
    let first_octet = u8::from_str_radix(&wired.host_mac.to_string()[..2], 16).unwrap();
    assert_eq!(first_octet & 0x03, 0x02, "locally administered unicast");

    let pod = b.pod.link("eth0").expect("pod eth0");
    assert_eq!(pod["address"], wired.pod_mac.to_string());
    assert_eq!(pod["mtu"], 9001);
    assert!(has_flag(&pod, "UP"));
    let addrs = b.pod.ip_json(&["addr", "show", "dev", "eth0"]);
    let info = addrs[0]["addr_info"].as_array().unwrap();
    assert!(
        info.iter()
            .any(|a| a["local"] == "10.0.0.21" && a["prefixlen"] == 32),
        "{addrs}"
    );
    let routes = b.pod.routes("main");
    assert!(routes
        .iter()
        .any(|r| r["dst"] == "169.254.1.1" && r["scope"] == "link" && r["dev"] == "eth0"));
    assert!(routes
        .iter()
        .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1"));
    let neigh = b.pod.ip_json(&["neigh", "show", "dev", "eth0"]);
    assert_eq!(neigh[0]["dst"], "169.254.1.1");
    assert_eq!(neigh[0]["lladdr"], wired.host_mac.to_string());
    assert_eq!(neigh[0]["state"][0], "PERMANENT");

    let host_routes = b.node.routes("main");
    let r = host_routes
        .iter()
        .find(|r| r["dst"] == "10.0.0.21")
        .expect("host /32 route");
    assert_eq!(r["dev"], n.host_veth.as_str());
    assert_eq!(r["scope"], "link");
    let rules = b.node.rules();
    let to = rules_with_priority(&rules, 512);
    assert_eq!(to.len(), 1);
    assert_eq!(
        (to[0]["dst"].as_str(), to[0]["table"].as_str()),
        (Some("10.0.0.21"), Some("main"))
    );
    let from = rules_with_priority(&rules, 1536);
    assert_eq!(from.len(), 1);
    assert_eq!(
        (from[0]["src"].as_str(), from[0]["table"].as_str()),
        (Some("10.0.0.21"), Some("3"))
    );

    check_pod(&b.host_nl, &b.pod_nl, &expected(&n, wired))
        .await
        .expect("fresh pod checks clean");

    teardown_host(&b.host_nl, &teardown_of(&n)).await.unwrap();
    delete_pod_link(&b.pod_nl, "eth0").await.unwrap();
    assert_nothing_left(&b, &n);
    teardown_host(&b.host_nl, &teardown_of(&n))
        .await
        .expect("second teardown is a no-op");
    assert!(!delete_pod_link(&b.pod_nl, "eth0").await.unwrap());
}

#[tokio::test]
async fn primary_eni_pod_gets_no_from_rule() {
    let b = bed("main");
    let n = net("10.0.0.30", 254);
    setup_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();
    let rules = b.node.rules();
    assert_eq!(rules_with_priority(&rules, 512).len(), 1);
    assert!(rules_with_priority(&rules, 1536).is_empty());
}

#[tokio::test]
async fn check_names_the_first_drift() {
    let b = bed("drift");
    let n = net("10.0.0.22", 2);
    let wired = setup_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();
    let want = expected(&n, wired);

    b.node
        .ip(&["route", "del", "10.0.0.22/32", "table", "main"]);
    let err = check_pod(&b.host_nl, &b.pod_nl, &want)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("host route 10.0.0.22/32 dev enic440f455693 is missing"),
        "{err}"
    );
    assert!(b.node.routes("main").is_empty(), "check must not repair");

    // New address first: removing an interface's last IPv4 address flushes its routes.
    b.pod.ip(&["addr", "add", "10.0.0.99/32", "dev", "eth0"]);
    b.pod.ip(&["addr", "del", "10.0.0.22/32", "dev", "eth0"]);
    let err = check_pod(&b.host_nl, &b.pod_nl, &want)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pod interface eth0 lacks address 10.0.0.22/32"),
        "{err}"
    );

    let other_mac = Expected {
        pod_mac: Some("02:00:00:00:00:01".parse().unwrap()),
        ..want.clone()
    };
    let err = check_pod(&b.host_nl, &b.pod_nl, &other_mac)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("pod interface eth0 has mac"), "{err}");

    b.node.ip(&["rule", "del", "prio", "1536"]);
    b.pod.ip(&["addr", "add", "10.0.0.22/32", "dev", "eth0"]);
    b.node.ip(&[
        "route",
        "add",
        "10.0.0.22/32",
        "dev",
        &n.host_veth,
        "scope",
        "link",
    ]);
    let err = check_pod(&b.host_nl, &b.pod_nl, &want)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("from 10.0.0.22/32 lookup 2 is missing"),
        "{err}"
    );
}

#[tokio::test]
async fn failed_wiring_is_undone() {
    let b = bed("rollback");
    let n = net("10.0.0.23", 3);
    // The pod already has an interface of that name: the spec requires an error.
    b.pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let err = setup_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("create veth: create veth enic440f455693 (peer eth0): file exists"),
        "{err}"
    );
    assert!(b.node.link(&n.host_veth).is_none());
    assert!(rules_with_priority(&b.node.rules(), 512).is_empty());
    assert!(
        b.pod.link("eth0").is_some(),
        "rollback must not touch what it did not create"
    );
}

#[tokio::test]
async fn leftover_host_veth_and_stale_rules_are_replaced() {
    let b = bed("leftover");
    let n = net("10.0.0.24", 3);
    b.node.ip(&[
        "link",
        "add",
        &n.host_veth,
        "type",
        "veth",
        "peer",
        "name",
        "stale0",
    ]);
    b.node.ip(&[
        "rule",
        "add",
        "from",
        "10.0.0.24",
        "lookup",
        "2",
        "prio",
        "1536",
    ]);
    b.node.ip(&[
        "rule",
        "add",
        "to",
        "10.0.0.24",
        "lookup",
        "main",
        "prio",
        "512",
    ]);
    setup_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();
    assert!(b.node.link("stale0").is_none(), "leftover pair removed");
    let rules = b.node.rules();
    let from = rules_with_priority(&rules, 1536);
    assert_eq!(from.len(), 1, "{from:?}");
    assert_eq!(from[0]["table"], "3");
    assert_eq!(rules_with_priority(&rules, 512).len(), 1);
}

#[tokio::test]
async fn teardown_leaves_an_address_now_routed_to_another_pod() {
    let b = bed("reused");
    let n = net("10.0.0.25", 3);
    setup_pod(&b.host_nl, &b.pod_nl, &b.pod_netns, &n)
        .await
        .unwrap();
    // A replayed DEL for an older attachment whose veth name differs.
    let old = HostTeardown {
        host_veths: vec!["eniold0000000".into()],
        addresses: vec![PodAddress {
            ip: n.ip,
            vlan: None,
        }],
    };
    teardown_host(&b.host_nl, &old).await.unwrap();
    let rules = b.node.rules();
    assert_eq!(
        rules_with_priority(&rules, 512).len(),
        1,
        "the live pod keeps its rules"
    );
    assert_eq!(rules_with_priority(&rules, 1536).len(), 1);
    assert!(b
        .node
        .routes("main")
        .iter()
        .any(|r| r["dst"] == "10.0.0.25"));
}

#[tokio::test]
async fn branch_pod_teardown_removes_vlan_link_and_iif_rules() {
    let b = bed("branch");
    // The kernel here has no 802.1Q; a veth carries the VLAN link's name for the test.
    b.node.ip(&[
        "link",
        "add",
        "vlan.eth.5",
        "type",
        "veth",
        "peer",
        "name",
        "vp5",
    ]);
    b.node.ip(&[
        "link",
        "add",
        "vlanabcdef12345",
        "type",
        "veth",
        "peer",
        "name",
        "vp6",
    ]);
    b.node.ip(&[
        "rule",
        "add",
        "iif",
        "vlan.eth.5",
        "lookup",
        "105",
        "prio",
        "10",
    ]);
    b.node.ip(&[
        "rule",
        "add",
        "iif",
        "vlanabcdef12345",
        "lookup",
        "105",
        "prio",
        "10",
    ]);
    b.node.ip(&[
        "rule",
        "add",
        "iif",
        "vlan.eth.6",
        "lookup",
        "106",
        "prio",
        "10",
    ]);
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
    let t = HostTeardown {
        host_veths: vec!["vlanabcdef12345".into()],
        addresses: vec![PodAddress {
            ip: "10.0.1.10".parse().unwrap(),
            vlan: Some(5),
        }],
    };
    teardown_host(&b.host_nl, &t).await.unwrap();
    assert!(b.node.link("vlan.eth.5").is_none());
    assert!(b.node.link("vlanabcdef12345").is_none());
    let left = rules_with_priority(&b.node.rules(), 10);
    assert_eq!(left.len(), 1, "only the other VLAN's rule stays: {left:?}");
    assert_eq!(left[0]["table"], "106");
    assert!(rules_with_priority(&b.node.rules(), 512).is_empty());
    teardown_host(&b.host_nl, &t).await.expect("idempotent");
}
