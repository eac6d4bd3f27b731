//! The kubelet's own path: containerd, configured with conf/10-vpc-cni.conflist, creates pod
//! sandboxes over CRI inside the simulated node's namespace and runs the plugin chain for them.
//! Needs root, containerd, runc and the reference CNI plugins (for loopback and portmap).

use harness::containerd::Containerd;
use harness::netns::{ip_json, ping_from_path, require_root};
use harness::node::Node;
use harness::plugin::repo_conflist;
use serde_json::json;

#[test]
fn containerd_sandboxes_get_vpc_addresses_reach_each_other_and_leak_nothing() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let mut conflist = repo_conflist();
    conflist["plugins"][0]["ipamdSocket"] = json!(node.ipamd.socket.display().to_string());
    conflist["plugins"][0]["pluginLogFile"] =
        json!(node.vpc.dir().join("plugin.log").display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let mut ctrd = Containerd::start(node.netns(), dir.path(), &conflist).unwrap();

    let mut sandboxes = Vec::new();
    for i in 0..4 {
        let id = ctrd
            .run_pod("default", &format!("web-{i}"), &[])
            .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", ctrd.log()));
        let ip = ctrd.pod_ip(&id).unwrap();
        let netns = ctrd.pod_netns(&id).unwrap();
        sandboxes.push((id, ip, netns));
    }

    let assigned = node.ipamd.assigned_ips().unwrap();
    let subnet: ipnet::Ipv4Net = node.instance.subnet_cidr.parse().unwrap();
    let mut ips: Vec<&String> = sandboxes.iter().map(|(_, ip, _)| ip).collect();
    for ip in &ips {
        assert!(
            subnet.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
            "{ip} outside {subnet}"
        );
        assert!(
            assigned.contains(ip),
            "{ip} is not an ipamd assignment: {assigned:?}"
        );
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "addresses are not distinct");
    let (_, _, first_ns) = &sandboxes[0];
    for (_, ip, _) in &sandboxes[1..] {
        assert!(ping_from_path(first_ns, ip), "pod 0 cannot reach {ip}");
    }

    for (id, _, _) in &sandboxes {
        ctrd.stop_pod(id).unwrap();
        ctrd.remove_pod(id).unwrap();
    }
    ctrd.stop();

    assert!(
        node.ipamd.assigned_ips().unwrap().is_empty(),
        "addresses leaked"
    );
    let links = ip_json(node.netns(), &["link", "show"]).unwrap();
    let veths: Vec<_> = links
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("eni"))
        .collect();
    assert!(veths.is_empty(), "host veths leaked: {veths:?}");
    let rules = ip_json(node.netns(), &["rule", "show"]).unwrap();
    assert!(
        !rules
            .iter()
            .any(|r| r["priority"] == 512 || r["priority"] == 1536),
        "pod rules leaked: {rules:?}"
    );
}
