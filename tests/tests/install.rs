//! The install flow of a node: `ipamd init` (the init container), the conflist written only
//! once ipamd can hand out an address, and `ipamd probe` (liveness and readiness). Needs root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::bins;
use harness::ipamd::Ipamd;
use harness::netns::{require_root, Netns};
use harness::process::wait_for;
use harness::vpc::Vpc;
use serde_json::{json, Value};

fn probe(socket: &Path) -> bool {
    Command::new(bins::path("ipamd"))
        .arg("probe")
        .env("IPAMD_SOCKET_PATH", socket)
        .env("AWS_VPC_K8S_CNI_LOG_FILE", "stderr")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn conflist_appears_only_once_ipamd_can_give_out_an_address() {
    require_root();
    let vpc = Vpc::start(&harness::demo::demo_scenario().unwrap()).unwrap();
    let node = vpc.node().clone();
    let dirs = tempfile::tempdir().unwrap();
    let (bin_dir, conf_dir) = (dirs.path().join("bin"), dirs.path().join("net.d"));
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&conf_dir).unwrap();
    let plugin = bins::path("vpc-cni");
    let (b, c, p) = (
        bin_dir.display().to_string(),
        conf_dir.display().to_string(),
        plugin.display().to_string(),
    );
    let env = Ipamd::env_for(
        &node,
        &vpc.dir(),
        &[
            ("HOST_CNI_BIN_PATH", &b),
            ("HOST_CNI_CONFDIR_PATH", &c),
            ("VPC_CNI_PLUGIN_BINARY", &p),
            ("POD_MTU", "1500"),
        ],
    );
    // EC2 refuses every address for now (a missing IAM permission): ipamd starts, but has
    // nothing to give.
    vpc.inject_fault(&json!({"action": "AssignPrivateIpAddresses", "error": "UnauthorizedOperation", "times": 1000}))
        .unwrap();
    vpc.inject_fault(&json!({"action": "CreateNetworkInterface", "error": "UnauthorizedOperation", "times": 1000}))
        .unwrap();
    let ipamd = Ipamd::start(&node, env).unwrap();
    assert!(probe(&ipamd.socket), "probe fails while ipamd serves");

    let installed = bin_dir.join("vpc-cni");
    let bytes = wait_for("the plugin binary", Duration::from_secs(10), || {
        std::fs::read(&installed).ok()
    })
    .unwrap();
    assert_eq!(
        bytes,
        std::fs::read(&plugin).unwrap(),
        "installed plugin differs"
    );
    std::thread::sleep(Duration::from_secs(2));
    let conflist = conf_dir.join("10-aws.conflist");
    assert!(
        !conflist.exists(),
        "conflist written before any address was available"
    );

    harness::vpc::http_json(&vpc.info.ec2_endpoint, "POST", "/sim/faults/reset", None).unwrap();
    let text = wait_for("the conflist", Duration::from_secs(60), || {
        std::fs::read(&conflist).ok()
    })
    .unwrap();
    let v: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["name"], "aws-cni");
    assert_eq!(v["plugins"][0]["type"], "vpc-cni");
    assert_eq!(v["plugins"][0]["mtu"], "1500");
    assert_eq!(
        v["plugins"][0]["ipamdSocket"],
        ipamd.socket.display().to_string()
    );
    assert_eq!(v["plugins"][1]["type"], "portmap");
    let leftovers: Vec<_> = std::fs::read_dir(&conf_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temp files left: {leftovers:?}");

    let socket = ipamd.socket.clone();
    drop(ipamd);
    assert!(!probe(&socket), "probe succeeds with ipamd stopped");
}

#[test]
fn init_installs_the_plugin_and_sets_node_sysctls() {
    require_root();
    let ns = Netns::new("init").unwrap();
    ns.exec_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    ns.exec_ok(&["ip", "addr", "add", "10.9.0.10/24", "dev", "eth0"])
        .unwrap();
    ns.exec_ok(&["ip", "link", "set", "eth0", "up"]).unwrap();
    ns.exec_ok(&[
        "ip", "route", "add", "default", "via", "10.9.0.1", "dev", "eth0", "onlink",
    ])
    .unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(bins::path("ipamd"))
        .arg("init")
        .env("HOST_CNI_BIN_PATH", bin_dir.path())
        .env("VPC_CNI_PLUGIN_BINARY", bins::path("vpc-cni"))
        .env("DISABLE_TCP_EARLY_DEMUX", "true")
        .env("AWS_VPC_K8S_CNI_LOG_FILE", "stderr")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ipamd init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bin_dir.path().join("vpc-cni").exists(),
        "plugin not installed"
    );
    let demux = ns
        .exec_ok(&["cat", "/proc/sys/net/ipv4/tcp_early_demux"])
        .unwrap();
    assert_eq!(demux.trim(), "0");
    let rp = ns
        .exec_ok(&["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"])
        .unwrap();
    assert_eq!(rp.trim(), "2");
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_variable() {
    for (name, value) in [
        ("WARM_IP_TARGET", "many"),
        ("AWS_VPC_ENI_MTU", "70000"),
        ("POD_MTU", "1"),
    ] {
        let out = Command::new(bins::path("ipamd"))
            .env_clear()
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{name}={value}: {err}");
    }
}

/// The configured MTUs reach every interface: AWS_VPC_ENI_MTU on each ENI link of the node
/// (primary and secondary), POD_MTU through the conflist ipamd writes onto both ends of every
/// pod's veth.
#[test]
fn configured_mtus_reach_every_interface() {
    require_root();
    let dirs = tempfile::tempdir().unwrap();
    let conf_dir = dirs.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let c = conf_dir.display().to_string();
    let node = harness::node::Node::start(&[
        ("AWS_VPC_ENI_MTU", "8000"),
        ("POD_MTU", "1400"),
        ("HOST_CNI_CONFDIR_PATH", &c),
    ])
    .unwrap();
    let conflist = conf_dir.join("10-aws.conflist");
    let text = wait_for("the conflist", Duration::from_secs(30), || {
        std::fs::read(&conflist).ok()
    })
    .unwrap();
    let conf =
        harness::plugin::netconf_from_conflist(&serde_json::from_slice(&text).unwrap(), &json!({}));
    let mut pods = Vec::new();
    for i in 0..10 {
        let p = node.pod(&format!("mtu{i}"), &format!("c-mtu{i}")).unwrap();
        let out = harness::plugin::run(node.netns(), "ADD", &p.pod, &conf).unwrap();
        assert!(out.ok(), "ADD failed: {}", out.stdout);
        let host_veth = out.json()["interfaces"][0]["name"]
            .as_str()
            .unwrap()
            .to_string();
        pods.push((p, host_veth));
    }
    let links = harness::netns::ip_json(node.netns(), &["link", "show"]).unwrap();
    let mtu_of = |name: &str| {
        links
            .iter()
            .find(|l| l["ifname"] == name)
            .and_then(|l| l["mtu"].as_u64())
    };
    let enis: Vec<&str> = links
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("eth"))
        .collect();
    assert!(enis.len() >= 2, "ten pods need a secondary ENI: {enis:?}");
    for eni in enis {
        assert_eq!(mtu_of(eni), Some(8000), "ENI link {eni}");
    }
    for (p, host_veth) in &pods {
        assert_eq!(mtu_of(host_veth), Some(1400), "host veth {host_veth}");
        let pod_links = harness::netns::ip_json(&p.ns.name, &["link", "show", "eth0"]).unwrap();
        assert_eq!(pod_links[0]["mtu"], 1400, "eth0 of {}", p.pod.name);
    }
}
