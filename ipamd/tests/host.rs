//! ENI plumbing over netlink, checked with `ip -j` in throwaway namespaces. Needs root (to
//! create namespaces); fails, never skips, without it.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ipamd::datastore::EniInfo;
use ipamd::host::{Host, LinkWait};
use serde_json::Value;
use vpc_cni::netlink::{Netlink, Netns};

/// A node namespace and a "VPC" namespace holding the far ends of the fake ENI links;
/// both are deleted on drop.
struct Namespaces {
    node: String,
    vpc: String,
}

impl Namespaces {
    fn new(tag: &str) -> Self {
        assert!(
            nix_is_root(),
            "this test needs root to create network namespaces"
        );
        let pid = std::process::id();
        let ns = Namespaces {
            node: format!("ipamdt-{tag}-{pid}"),
            vpc: format!("ipamdv-{tag}-{pid}"),
        };
        ip(&["netns", "add", &ns.node]);
        ip(&["netns", "add", &ns.vpc]);
        ns
    }

    /// A link named `name` with `mac` in the node namespace, as EC2 attaching an ENI makes.
    fn plug(&self, name: &str, mac: &str) {
        let peer = format!("p{name}");
        ip(&[
            "-n", &self.node, "link", "add", name, "address", mac, "type", "veth", "peer", "name",
            &peer, "netns", &self.vpc,
        ]);
    }

    fn node_ip(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j", "-n", &self.node];
        full.extend_from_slice(args);
        let out = ip(&full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {out}"))
    }

    async fn host(&self) -> Host {
        let netns = Arc::new(Netns::named(&self.node).expect("open node netns"));
        let nl = Netlink::in_netns(netns).expect("netlink in node netns");
        Host::new(
            nl,
            9001,
            LinkWait {
                attempts: 3,
                interval: Duration::from_millis(100),
            },
        )
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.node, &self.vpc] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn eni(mac: &str) -> EniInfo {
    EniInfo {
        id: "eni-test1".into(),
        mac: mac.into(),
        device_index: 1,
        primary: false,
        primary_ip: "10.0.0.30".parse().unwrap(),
        subnet: "10.0.0.0/24".parse().unwrap(),
    }
}

fn rules_with_priority(ns: &Namespaces, prio: u64) -> Vec<Value> {
    let rules = ns.node_ip(&["rule", "show"]);
    rules
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["priority"] == prio)
        .cloned()
        .collect()
}

#[tokio::test]
async fn secondary_eni_gets_address_table_and_rule() {
    let ns = Namespaces::new("eni");
    ns.plug("eth1", "02:aa:00:00:00:01");
    let host = ns.host().await;
    host.setup_secondary_eni(&eni("02:aa:00:00:00:01"))
        .await
        .unwrap();
    // Twice: a restart plumbs every ENI again and must not duplicate anything.
    host.setup_secondary_eni(&eni("02:AA:00:00:00:01"))
        .await
        .unwrap();

    let link = &ns.node_ip(&["addr", "show", "dev", "eth1"])[0];
    assert_eq!(link["mtu"], 9001);
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link}"
    );
    let v4: Vec<String> = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(v4, vec!["10.0.0.30/24"]);

    let table: Vec<(String, String, String)> = ns
        .node_ip(&["route", "show", "table", "2"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (s("dst"), s("gateway"), s("dev"))
        })
        .collect();
    assert_eq!(
        table,
        vec![
            ("default".into(), "10.0.0.1".into(), "eth1".into()),
            ("10.0.0.1".into(), "".into(), "eth1".into()),
        ]
    );
    let main = ns.node_ip(&["route", "show", "table", "main"]);
    assert!(
        !main
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "10.0.0.0/24" && r["dev"] == "eth1"),
        "kernel subnet route left in main: {main}"
    );

    let rules = rules_with_priority(&ns, 32765);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        (rules[0]["src"].as_str(), rules[0]["table"].as_str()),
        (Some("10.0.0.30"), Some("2"))
    );

    host.teardown_eni(&eni("02:aa:00:00:00:01")).await.unwrap();
    assert!(rules_with_priority(&ns, 32765).is_empty());
    assert_eq!(
        ns.node_ip(&["route", "show", "table", "2"]),
        Value::Array(vec![])
    );
}

#[tokio::test]
async fn primary_eni_only_gets_its_mtu() {
    let ns = Namespaces::new("pri");
    ns.plug("eth0", "02:aa:00:00:00:02");
    ip(&["-n", &ns.node, "addr", "add", "10.0.0.10/24", "dev", "eth0"]);
    ip(&["-n", &ns.node, "link", "set", "eth0", "up"]);
    let host = ns.host().await;
    let info = EniInfo {
        primary: true,
        device_index: 0,
        ..eni("02:aa:00:00:00:02")
    };
    host.setup_primary_eni(&info).await.unwrap();

    let link = &ns.node_ip(&["addr", "show", "dev", "eth0"])[0];
    assert_eq!(link["mtu"], 9001);
    let main = ns.node_ip(&["route", "show", "table", "main"]);
    assert!(
        main.as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "10.0.0.0/24"),
        "main untouched: {main}"
    );
    assert!(rules_with_priority(&ns, 32765).is_empty());
}

#[tokio::test]
async fn missing_eni_link_is_an_error_naming_the_eni() {
    let ns = Namespaces::new("miss");
    let host = ns.host().await;
    let err = host
        .setup_secondary_eni(&eni("02:aa:00:00:00:09"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("eni-test1") && text.contains("02:aa:00:00:00:09"),
        "{text}"
    );
}

/// A pod the plugin wired: host veth, /32 route in main, rules 512 and 1536.
fn wire_pod(ns: &Namespaces, veth: &str, ip_addr: &str) {
    ip(&[
        "-n",
        &ns.node,
        "link",
        "add",
        veth,
        "type",
        "veth",
        "peer",
        "name",
        &format!("c{}", &veth[3..]),
        "netns",
        &ns.vpc,
    ]);
    ip(&["-n", &ns.node, "link", "set", veth, "up"]);
    ip(&[
        "-n", &ns.node, "route", "add", ip_addr, "dev", veth, "scope", "link",
    ]);
    ip(&[
        "-n", &ns.node, "rule", "add", "prio", "512", "to", ip_addr, "lookup", "main",
    ]);
    ip(&[
        "-n", &ns.node, "rule", "add", "prio", "1536", "from", ip_addr, "lookup", "2",
    ]);
}

#[tokio::test]
async fn pod_state_reads_veths_routes_and_rules_and_stale_rules_go() {
    let ns = Namespaces::new("pod");
    let veth = vpc_cni::names::host_veth_name("eni", "ns1", "pod-a");
    wire_pod(&ns, &veth, "10.0.0.24");
    // Rules of a pod whose veth is already gone (deleted while ipamd was down).
    ip(&[
        "-n",
        &ns.node,
        "rule",
        "add",
        "prio",
        "512",
        "to",
        "10.0.0.25",
        "lookup",
        "main",
    ]);
    ip(&[
        "-n",
        &ns.node,
        "rule",
        "add",
        "prio",
        "1536",
        "from",
        "10.0.0.25",
        "lookup",
        "2",
    ]);
    ip(&[
        "-n",
        &ns.node,
        "rule",
        "add",
        "prio",
        "1536",
        "from",
        "10.0.0.25",
        "lookup",
        "3",
    ]);

    let host = ns.host().await;
    let state = host.pod_state("eni").await.unwrap();
    assert_eq!(state.routes.len(), 1, "{state:?}");
    assert_eq!(state.routes[0].ip.to_string(), "10.0.0.24");
    assert_eq!(state.routes[0].veth, veth);
    assert_eq!(state.routes[0].hash, ipamd::names::pod_hash("ns1", "pod-a"));
    let rule_ips: Vec<String> = state.rule_ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(rule_ips, vec!["10.0.0.24", "10.0.0.25"]);

    assert_eq!(
        host.remove_pod_rules("10.0.0.25".parse().unwrap())
            .await
            .unwrap(),
        3
    );
    let left: Vec<Value> = [512, 1536]
        .iter()
        .flat_map(|p| rules_with_priority(&ns, *p))
        .collect();
    assert_eq!(left.len(), 2, "only 10.0.0.24's rules stay: {left:?}");
    assert!(left
        .iter()
        .all(|r| r["dst"] == "10.0.0.24" || r["src"] == "10.0.0.24"));
}

#[tokio::test]
async fn trunk_eni_is_plumbed_without_a_source_rule() {
    let ns = Namespaces::new("trunk");
    ns.plug("eth2", "02:aa:00:00:00:03");
    let host = ns.host().await;
    let trunk = EniInfo {
        id: "eni-trunk".into(),
        device_index: 2,
        primary_ip: "10.0.0.31".parse().unwrap(),
        ..eni("02:aa:00:00:00:03")
    };
    host.setup_trunk_eni(&trunk).await.unwrap();

    let link = &ns.node_ip(&["addr", "show", "dev", "eth2"])[0];
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link}"
    );
    let table = ns.node_ip(&["route", "show", "table", "3"]);
    assert!(
        table
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default"),
        "table 3: {table}"
    );
    assert!(
        rules_with_priority(&ns, 32765).is_empty(),
        "the trunk must not get rule 32765"
    );
    let index = host
        .link_index_by_mac("eni-trunk", "02:AA:00:00:00:03")
        .await
        .unwrap();
    assert_eq!(index, link["ifindex"].as_u64().map(|i| i as u32));
    let none = host
        .link_index_by_mac("eni-x", "02:aa:00:00:00:99")
        .await
        .unwrap();
    assert_eq!(none, None);
}

#[tokio::test]
async fn local_rule_moves_to_priority_20_once() {
    let ns = Namespaces::new("local");
    let host = ns.host().await;
    let local_rules = || -> Vec<u64> {
        let rules = ns.node_ip(&["rule", "show"]);
        rules
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["table"] == "local" && r.get("src").is_none_or(|s| s == "all"))
            .map(|r| r["priority"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        local_rules(),
        vec![0],
        "a fresh namespace has the kernel's rule"
    );
    assert!(host.move_local_rule().await.unwrap());
    assert_eq!(local_rules(), vec![20]);
    assert!(
        !host.move_local_rule().await.unwrap(),
        "second run changes nothing"
    );
    assert_eq!(local_rules(), vec![20]);

    // Interrupted between the add and the delete: the next run finishes the move.
    ip(&[
        "-n", &ns.node, "rule", "add", "pref", "0", "lookup", "local",
    ]);
    assert_eq!(local_rules(), vec![0, 20]);
    assert!(host.move_local_rule().await.unwrap());
    assert_eq!(local_rules(), vec![20]);
}
