//! vpc-cni as the first link of a CNI chain: containerd runs conf/10-vpc-cni.conflist (vpc-cni,
//! then portmap) and a variant with bandwidth on a simulated node, and each later plugin gets
//! vpc-cni's result as prevResult. A hostPort is reached through the node's address from other
//! instances of the VPC and is gone with the sandbox; bandwidth limits from pod annotations
//! shape the host veth. Run by hand, portmap and bandwidth accept vpc-cni's result at every
//! version they serve.
//!
//! Needs root, containerd, runc, the built workspace binaries and Debian's
//! containernetworking-plugins (portmap, bandwidth, loopback).

use std::path::Path;

use harness::containerd::Containerd;
use harness::netns::{exec_in_ok, ip_json, require_root, tcp_reaches, Netns, TcpService};
use harness::node::Node;
use harness::plugin::{self, host_veth_name, repo_conflist, Outcome, Pod};
use serde_json::{json, Value};

const POD_PORT: u16 = 8080;
const HOST_PORT: u16 = 30080;
const PLUGIN_DIR: &str = "/usr/lib/cni";
/// 1 Mbit/s, as the kubelet's annotations write it and as bits and bytes per second.
const LIMIT_ANNOTATION: &str = "1M";
const LIMIT_BITS: u64 = 1_000_000;

/// The repo's conflist pointed at this node's ipamd, plus `extra` plugins after portmap.
fn node_conflist(node: &Node, extra: &[Value]) -> Value {
    let mut conflist = repo_conflist();
    conflist["plugins"][0]["ipamdSocket"] = json!(node.ipamd.socket);
    conflist["plugins"][0]["pluginLogFile"] = json!(node.vpc.dir().join("plugin.log"));
    let plugins = conflist["plugins"].as_array_mut().unwrap();
    plugins.extend(extra.iter().cloned());
    conflist
}

/// containerd names pod namespaces by path under /var/run/netns; the harness enters by name.
fn netns_name(path: &str) -> &str {
    path.strip_prefix("/var/run/netns/")
        .unwrap_or_else(|| panic!("pod namespace {path} is not under /var/run/netns"))
}

/// The node's NAT table as iptables-save prints it, the way portmap wrote it.
fn nat_rules(node: &Node) -> String {
    exec_in_ok(node.netns(), &["iptables-save", "-t", "nat"]).unwrap()
}

/// Lines of the NAT table that belong to one hostPort mapping: its DNAT chain and rules.
fn port_mapping_lines(rules: &str, host_port: u16) -> Vec<String> {
    let port = host_port.to_string();
    rules
        .lines()
        .filter(|l| l.contains("CNI-DN-") || l.split([' ', ',']).any(|w| w == port))
        .map(str::to_string)
        .collect()
}

/// Other instances of the scenario: the clients that reach the pod through the node.
fn vpc_clients(node: &Node) -> Vec<(String, String)> {
    let clients: Vec<(String, String)> = node
        .vpc
        .info
        .instances
        .iter()
        .filter(|i| i.id != node.instance.id)
        .map(|i| (format!("{} ({})", i.id, i.role), i.netns.clone()))
        .collect();
    assert!(
        !clients.is_empty(),
        "the scenario has no instance besides the node"
    );
    clients
}

/// A sandbox with a hostPort, as the node sees it.
struct Mapped {
    id: String,
    ip: String,
    netns: String,
    host_port: u16,
    /// The address belongs to a secondary ENI (rule 1536 sends the pod's traffic to its table).
    secondary: bool,
}

/// Most sandboxes to start before both kinds of ENI hold one (m5.large: 9 addresses per ENI).
const MAX_SANDBOXES: u16 = 12;

/// Starts sandboxes, each with its own hostPort, until one has an address of the primary ENI
/// and one of a secondary ENI; returns them all.
fn sandboxes_on_both_kinds_of_eni(node: &Node, ctrd: &mut Containerd) -> Vec<Mapped> {
    let mut started: Vec<Mapped> = Vec::new();
    for i in 0..MAX_SANDBOXES {
        let host_port = HOST_PORT + i;
        let id = ctrd
            .run_pod(
                "default",
                &format!("web-{i}"),
                &[(POD_PORT.into(), host_port.into())],
            )
            .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", ctrd.log()));
        let ip = ctrd.pod_ip(&id).unwrap();
        let secondary = node.rules_for(&ip).iter().any(|r| r["priority"] == 1536);
        let netns = ctrd.pod_netns(&id).unwrap();
        started.push(Mapped {
            id,
            ip,
            netns,
            host_port,
            secondary,
        });
        if started.iter().any(|m| m.secondary) && started.iter().any(|m| !m.secondary) {
            return started;
        }
    }
    panic!("no primary and secondary ENI addresses after {MAX_SANDBOXES} sandboxes");
}

/// What each client of the VPC fails to reach, directly and through the hostPort.
fn unreachable_through_host_port(node: &Node, pod: &Mapped) -> Vec<String> {
    let service = TcpService::start(netns_name(&pod.netns), POD_PORT).unwrap();
    let eni = if pod.secondary {
        "secondary"
    } else {
        "primary"
    };
    let node_ip = &node.instance.primary_ip;
    let mut failures = Vec::new();
    for (client, netns) in vpc_clients(node) {
        if !tcp_reaches(&netns, &pod.ip, POD_PORT) {
            failures.push(format!("{client} -> pod {} ({eni} ENI) directly", pod.ip));
        }
        if !tcp_reaches(&netns, node_ip, pod.host_port) {
            failures.push(format!(
                "{client} -> {node_ip}:{} -> pod {} ({eni} ENI)",
                pod.host_port, pod.ip
            ));
        }
    }
    drop(service);
    failures
}

#[test]
fn host_port_reaches_the_pod_from_the_vpc_and_leaves_with_it() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut ctrd = Containerd::start(node.netns(), dir.path(), &node_conflist(&node, &[])).unwrap();
    let sandboxes = sandboxes_on_both_kinds_of_eni(&node, &mut ctrd);

    let rules = nat_rules(&node);
    let mut failures = Vec::new();
    for pod in &sandboxes {
        if port_mapping_lines(&rules, pod.host_port).is_empty() {
            failures.push(format!("portmap wrote no rule for {}", pod.host_port));
        }
    }
    let primary = sandboxes.iter().find(|m| !m.secondary).unwrap();
    let secondary = sandboxes.iter().find(|m| m.secondary).unwrap();
    for pod in [primary, secondary] {
        failures.extend(unreachable_through_host_port(&node, pod));
    }

    // Tear down before judging, so a failure leaves no sandbox namespace behind.
    for pod in &sandboxes {
        ctrd.stop_pod(&pod.id).unwrap();
        ctrd.remove_pod(&pod.id).unwrap();
    }
    ctrd.stop();
    let rules = nat_rules(&node);
    for pod in &sandboxes {
        let left = port_mapping_lines(&rules, pod.host_port);
        if !left.is_empty() {
            failures.push(format!("port mapping left after the sandbox: {left:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "hostPort failures:\n{}\nNAT table:\n{rules}",
        failures.join("\n")
    );
    assert!(
        node.ipamd.assigned_ips().unwrap().is_empty(),
        "address leaked"
    );
}

/// Token bucket filters on `dev` in the node: their rates in bytes per second.
fn tbf_rates(node: &Node, dev: &str) -> Vec<u64> {
    let out = exec_in_ok(node.netns(), &["tc", "-j", "qdisc", "show", "dev", dev]).unwrap();
    let qdiscs: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    qdiscs
        .iter()
        .filter(|q| q["kind"] == "tbf")
        .filter_map(|q| q["options"]["rate"].as_u64())
        .collect()
}

/// The ifb devices bandwidth makes for egress limits (named bwp + hash).
fn ifb_links(node: &Node) -> Vec<String> {
    ip_json(node.netns(), &["link", "show", "type", "ifb"])
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn bandwidth_annotations_shape_the_host_veth() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bandwidth = json!({ "type": "bandwidth", "capabilities": { "bandwidth": true } });
    let conflist = node_conflist(&node, &[bandwidth]);
    let mut ctrd = Containerd::start(node.netns(), dir.path(), &conflist).unwrap();
    let annotations = [
        ("kubernetes.io/ingress-bandwidth", LIMIT_ANNOTATION),
        ("kubernetes.io/egress-bandwidth", LIMIT_ANNOTATION),
    ];
    let id = ctrd
        .run_pod_annotated("default", "slow", &[], &annotations)
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", ctrd.log()));

    // Ingress (towards the pod) is shaped on the host veth itself, egress on an ifb device
    // that the host veth's ingress traffic is redirected to.
    let veth = host_veth_name("eni", "default", "slow");
    assert_eq!(
        tbf_rates(&node, &veth),
        [LIMIT_BITS / 8],
        "ingress limit on {veth}"
    );
    let ifbs = ifb_links(&node);
    assert_eq!(
        ifbs.len(),
        1,
        "one ifb device for the egress limit: {ifbs:?}"
    );
    assert_eq!(
        tbf_rates(&node, &ifbs[0]),
        [LIMIT_BITS / 8],
        "egress limit on {}",
        ifbs[0]
    );

    ctrd.stop_pod(&id).unwrap();
    ctrd.remove_pod(&id).unwrap();
    ctrd.stop();
    assert!(
        ifb_links(&node).is_empty(),
        "ifb device left: {:?}",
        ifb_links(&node)
    );
    assert!(!node.has_link(&veth), "host veth {veth} left");
}

/// A chained plugin's network config at `version`, as a runtime builds it from the list.
fn link_conf(kind: &str, version: &str, runtime: Value, prev: &Value) -> Value {
    let mut conf = json!({
        "cniVersion": version,
        "name": "aws-cni",
        "type": kind,
        "runtimeConfig": runtime,
        "prevResult": prev,
    });
    if kind == "portmap" {
        conf["snat"] = json!(true);
        conf["capabilities"] = json!({ "portMappings": true });
    }
    conf
}

fn run_link(node: &Node, kind: &str, command: &str, pod: &Pod, conf: &Value) -> Outcome {
    let binary = Path::new(PLUGIN_DIR).join(kind);
    assert!(
        binary.exists(),
        "{} is missing: install containernetworking-plugins",
        binary.display()
    );
    let env = plugin::cni_env(command, pod);
    plugin::exec(node.netns(), &binary, &env, conf.to_string().as_bytes()).unwrap()
}

fn served_by(kind: &str, version: &str) -> bool {
    let env = [("CNI_COMMAND".to_string(), "VERSION".to_string())];
    let stdin = json!({ "cniVersion": "1.0.0" }).to_string();
    let netns = Netns::new("ver").unwrap();
    let binary = Path::new(PLUGIN_DIR).join(kind);
    let out = plugin::exec(&netns.name, &binary, &env, stdin.as_bytes()).unwrap();
    let reply: Value = serde_json::from_str(&out.stdout).expect("VERSION reply");
    reply["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.iter().any(|s| s == version))
}

/// (plugin, its runtimeConfig): the two links containerd adds after vpc-cni.
fn links(host_port: u16) -> [(&'static str, Value); 2] {
    [
        (
            "portmap",
            json!({ "portMappings": [
                { "hostPort": host_port, "containerPort": POD_PORT, "protocol": "tcp" }
            ] }),
        ),
        (
            "bandwidth",
            json!({ "bandwidth": {
                "ingressRate": LIMIT_BITS, "ingressBurst": LIMIT_BITS,
                "egressRate": LIMIT_BITS, "egressBurst": LIMIT_BITS,
            } }),
        ),
    ]
}

/// Runs vpc-cni, portmap and bandwidth by hand at one version, each link getting the previous
/// link's output as prevResult, then DEL in reverse order.
fn chain_at(node: &Node, version: &str, host_port: u16) {
    let ns = Netns::new("chain").unwrap();
    let pod = Pod::new(
        "default",
        &format!("chain-{}", ns.name),
        &ns.name,
        &ns.path(),
    );
    let mut conf = node.conf.clone();
    conf["cniVersion"] = json!(version);
    let add = plugin::run(node.netns(), "ADD", &pod, &conf).unwrap();
    assert!(add.ok(), "vpc-cni ADD at {version}: {add:?}");
    let ours = add.json();

    let mut prev = ours.clone();
    let mut added = Vec::new();
    for (kind, runtime) in links(host_port) {
        let conf = link_conf(kind, version, runtime, &prev);
        let out = run_link(node, kind, "ADD", &pod, &conf);
        if !served_by(kind, version) {
            // Debian's plugins predate this version; the runtime would get code 1, not a
            // broken chain. Compared only where both sides serve the version.
            assert_eq!(out.json()["code"], 1, "{kind} at {version}: {out:?}");
            continue;
        }
        assert!(
            out.ok(),
            "{kind} refused vpc-cni's result at {version}: {out:?}"
        );
        let result = out.json();
        assert_eq!(result["cniVersion"], version, "{kind} at {version}");
        assert_eq!(
            result["ips"], ours["ips"],
            "{kind} changed the addresses at {version}"
        );
        added.push((kind, conf));
        prev = result;
    }
    check_link_effects(node, &added, &ours, host_port, version);

    for (kind, conf) in added.iter().rev() {
        let out = run_link(node, kind, "DEL", &pod, conf);
        assert!(out.ok(), "{kind} DEL at {version}: {out:?}");
    }
    let del = plugin::run(
        node.netns(),
        "DEL",
        &pod,
        &plugin::with_prev_result(&conf, &ours),
    )
    .unwrap();
    assert!(del.ok(), "vpc-cni DEL at {version}: {del:?}");
    let left = port_mapping_lines(&nat_rules(node), host_port);
    assert!(left.is_empty(), "port mapping left at {version}: {left:?}");
    assert!(ifb_links(node).is_empty(), "ifb left at {version}");
}

fn check_link_effects(
    node: &Node,
    added: &[(&str, Value)],
    ours: &Value,
    port: u16,
    version: &str,
) {
    for (kind, _) in added {
        match *kind {
            "portmap" => {
                let lines = port_mapping_lines(&nat_rules(node), port);
                assert!(
                    !lines.is_empty(),
                    "portmap at {version} wrote no rule for {port}"
                );
            }
            "bandwidth" => {
                let veth = ours["interfaces"][0]["name"].as_str().unwrap();
                assert_eq!(
                    tbf_rates(node, veth),
                    [LIMIT_BITS / 8],
                    "bandwidth at {version}"
                );
            }
            other => unreachable!("no checks for {other}"),
        }
    }
}

#[test]
fn chained_plugins_accept_our_result_at_every_version() {
    require_root();
    let node = Node::start(&[]).unwrap();
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        chain_at(&node, version, HOST_PORT + 1 + i as u16);
    }
}
