//! vpc-sim's datapath: packets travel between instances, and to hosts beyond the VPC's private
//! gateway, the way the VPC carries them, only to addresses EC2 assigned and only from
//! addresses the sending ENI owns. Needs root.

mod sim_util;

use std::net::Ipv4Addr;

use aws_sdk_ec2::Client;
use harness::netns::{tcp_reaches, tcp_source, TcpService};
use serde_json::{json, Value};
use sim_util::{exec_ok, ping, require_root, scenario, set_groups, tcp_ok, Sim};

/// The host beyond the VPC in `outside_scenario`.
const OUTSIDE_HOST: &str = "203.0.113.10";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn primary_eni(sim: &Sim, instance: &str) -> String {
    sim.instance(instance).primary_eni_id.clone()
}

async fn assign(ec2: &Client, eni: &str, addr: &str) {
    ec2.assign_private_ip_addresses()
        .network_interface_id(eni)
        .private_ip_addresses(addr)
        .send()
        .await
        .expect("assign address");
}

async fn unassign(ec2: &Client, eni: &str, addr: &str) {
    ec2.unassign_private_ip_addresses()
        .network_interface_id(eni)
        .private_ip_addresses(addr)
        .send()
        .await
        .expect("unassign address");
}

/// Counts ICMP echo requests from `src` arriving in `netns` (an nft counter in that
/// instance's own namespace).
fn watch_echo_requests(netns: &str, src: &str) {
    watch(netns, &format!("ip saddr {src} icmp type echo-request"));
}

/// Counts packets that match the nft expression `rule` arriving in `netns`; read the count
/// with `watched`.
fn watch(netns: &str, rule: &str) {
    let script = format!(
        "table ip watch {{\n chain input {{\n type filter hook input priority 0;\n \
         {rule} counter\n }}\n}}\n"
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait()
        })
        .expect("nft in instance netns");
    assert!(out.success());
}

/// Packets the fabric dropped for failing the source/destination check.
fn fabric_drops(sim: &Sim) -> u64 {
    sim_util::fabric_counter(&sim.info.fabric_netns, "source/destination check drops")
}

fn watched(netns: &str) -> u64 {
    let text = exec_ok(netns, &["nft", "-j", "list", "table", "ip", "watch"]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|item| {
            item["rule"]["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
        })
        .unwrap_or_else(|| panic!("no counter in table watch"))
}

#[test]
fn instances_in_different_subnets_reach_each_other() {
    require_root();
    let sim = Sim::start(&scenario());
    let small = sim.netns("i-small");
    let db = sim.netns("i-db");
    assert!(
        ping(&small, ip("10.0.1.20"), None),
        "node -> host across subnets"
    );
    assert!(
        ping(&db, ip("10.0.0.10"), None),
        "host -> node across subnets"
    );
    assert!(
        ping(&small, ip("10.0.0.11"), None),
        "node -> node in one subnet"
    );
    assert!(
        ping(&small, ip("10.0.0.1"), None),
        "node -> its subnet router"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_addresses_ec2_assigned_are_delivered() {
    require_root();
    let sim = Sim::start(&scenario());
    let ec2 = sim.ec2();
    let small = sim.netns("i-small");
    let db = sim.netns("i-db");
    let db_eni = primary_eni(&sim, "i-db");

    // The host answers for 10.0.1.50 on its own, but EC2 never gave it that address.
    exec_ok(&db, &["ip", "addr", "add", "10.0.1.50/24", "dev", "eth0"]);
    assert!(
        !ping(&small, ip("10.0.1.50"), None),
        "delivered an unassigned address"
    );

    assign(&ec2, &db_eni, "10.0.1.50").await;
    assert!(
        ping(&small, ip("10.0.1.50"), None),
        "assigned secondary address unreachable"
    );

    unassign(&ec2, &db_eni, "10.0.1.50").await;
    assert!(
        !ping(&small, ip("10.0.1.50"), None),
        "delivered after unassign"
    );

    // A delegated /28 is delivered as a whole.
    let out = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&db_eni)
        .ipv4_prefix_count(1)
        .send()
        .await
        .expect("assign prefix");
    let prefix: ipnet::Ipv4Net = out.assigned_ipv4_prefixes()[0]
        .ipv4_prefix()
        .unwrap()
        .parse()
        .unwrap();
    let inside = Ipv4Addr::from(u32::from(prefix.network()) + 9);
    exec_ok(
        &db,
        &["ip", "addr", "add", &format!("{inside}/32"), "dev", "eth0"],
    );
    assert!(
        ping(&small, inside, None),
        "address inside the delegated prefix unreachable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_check_drops_packets_from_foreign_addresses() {
    require_root();
    let sim = Sim::start(&scenario());
    let small = sim.netns("i-small");
    let large = sim.netns("i-large");
    let db = sim.netns("i-db");
    watch_echo_requests(&db, "10.0.0.11");

    // i-small sends with i-large's address as source: the fabric drops it before the host.
    exec_ok(
        &small,
        &["ip", "addr", "add", "10.0.0.11/32", "dev", "eth0"],
    );
    let drops = fabric_drops(&sim);
    assert!(!ping(&small, ip("10.0.1.20"), Some(ip("10.0.0.11"))));
    assert_eq!(watched(&db), 0, "spoofed packet reached the host");
    assert!(
        fabric_drops(&sim) > drops,
        "the fabric did not count the drop"
    );

    // The owner of that address gets through, so the counter does count.
    assert!(ping(&large, ip("10.0.1.20"), None));
    assert_eq!(watched(&db), 1);

    // Once EC2 assigns an address to the sender's ENI, it may use it as source.
    exec_ok(
        &small,
        &["ip", "addr", "add", "10.0.0.77/32", "dev", "eth0"],
    );
    assert!(!ping(&small, ip("10.0.1.20"), Some(ip("10.0.0.77"))));
    assign(&sim.ec2(), &primary_eni(&sim, "i-small"), "10.0.0.77").await;
    assert!(ping(&small, ip("10.0.1.20"), Some(ip("10.0.0.77"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_eni_answers_once_routed_like_ipamd_does() {
    require_root();
    let sim = Sim::start(&scenario());
    let ec2 = sim.ec2();
    let node = sim.netns("i-large");
    let db = sim.netns("i-db");

    // With the node's group, as ipamd creates ENIs, so the host's pings are admitted.
    let created = ec2
        .create_network_interface()
        .subnet_id("subnet-a")
        .groups("sg-0aaaaaaaaaaaaaaa1")
        .send()
        .await
        .unwrap();
    let eni = created.network_interface().unwrap();
    let (eni_id, eni_ip) = (
        eni.network_interface_id().unwrap().to_string(),
        eni.private_ip_address().unwrap().to_string(),
    );
    ec2.attach_network_interface()
        .network_interface_id(&eni_id)
        .instance_id("i-large")
        .device_index(1)
        .send()
        .await
        .unwrap();
    exec_ok(
        &node,
        &["ip", "addr", "add", &format!("{eni_ip}/24"), "dev", "eth1"],
    );
    exec_ok(&node, &["ip", "link", "set", "eth1", "up"]);

    // Replies leave through eth0 by the main table, with eth1's address as source: dropped.
    let drops = fabric_drops(&sim);
    assert!(
        !ping(&db, ip(&eni_ip), None),
        "reply through the wrong ENI passed the source check"
    );
    assert!(
        fabric_drops(&sim) > drops,
        "the reply was lost elsewhere than at the source check"
    );

    // A rule and a table per ENI, as ipamd installs them, send replies out of eth1.
    exec_ok(
        &node,
        &[
            "ip", "route", "add", "default", "via", "10.0.0.1", "dev", "eth1", "table", "2",
        ],
    );
    exec_ok(
        &node,
        &[
            "ip", "rule", "add", "from", &eni_ip, "lookup", "2", "prio", "32765",
        ],
    );
    assert!(
        ping(&db, ip(&eni_ip), None),
        "secondary ENI unreachable with policy routing"
    );
}

/// One node and one host beyond the VPC. The node's group admits only the VPC; sg-vpn admits
/// TCP 5432 from the outside network, sg-no-egress lets nothing new leave.
fn outside_scenario() -> Value {
    json!({
        "region": "us-west-2",
        "vpc": {"id": "vpc-0123456789abcdef0", "cidr": "10.0.0.0/16"},
        "subnets": [{"id": "subnet-a", "cidr": "10.0.0.0/24", "az": "us-west-2a"}],
        "securityGroups": [
            {"id": "sg-vpc", "name": "vpc",
             "ingress": [{"protocol": "-1", "cidrs": ["10.0.0.0/16"]}]},
            {"id": "sg-vpn", "name": "vpn",
             "ingress": [{"protocol": "tcp", "fromPort": 5432, "toPort": 5432,
                          "cidrs": ["203.0.113.0/24"]}]},
            {"id": "sg-no-egress", "name": "no-egress",
             "ingress": [{"protocol": "-1", "cidrs": ["10.0.0.0/16"]}], "egress": []}
        ],
        "instances": [
            {"id": "i-node", "type": "m5.large", "subnet": "subnet-a",
             "securityGroups": ["sg-vpc"], "role": "node", "privateIp": "10.0.0.10"}
        ],
        "outside": [OUTSIDE_HOST]
    })
}

fn outside_netns(sim: &Sim) -> String {
    let outside = sim
        .info
        .outside
        .as_ref()
        .expect("sim.json names the outside");
    assert_eq!(outside.addresses, [ip(OUTSIDE_HOST)]);
    outside.netns.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_sees_the_source_an_instance_sends_with() {
    require_root();
    let sim = Sim::start(&outside_scenario());
    let node = sim.netns("i-node");
    let outside = outside_netns(&sim);
    let _service = TcpService::start(&outside, 8443).expect("service in the outside netns");

    // The gateway carries the node's own address unchanged.
    assert_eq!(
        tcp_source(&node, OUTSIDE_HOST, 8443),
        Some(ip("10.0.0.10").into()),
        "the outside saw another source than the node's primary address"
    );

    // The node sends from an address EC2 never gave it: the source check drops it on the way.
    exec_ok(&node, &["ip", "addr", "add", "10.0.0.99/32", "dev", "lo"]);
    exec_ok(
        &node,
        &[
            "ip",
            "route",
            "add",
            OUTSIDE_HOST,
            "via",
            "10.0.0.1",
            "dev",
            "eth0",
            "src",
            "10.0.0.99",
        ],
    );
    watch(&outside, "ip saddr 10.0.0.99");
    let drops = fabric_drops(&sim);
    assert_eq!(tcp_source(&node, OUTSIDE_HOST, 8443), None);
    assert_eq!(watched(&outside), 0, "a foreign source reached the outside");
    assert!(
        fabric_drops(&sim) > drops,
        "the fabric did not count the drop"
    );

    // Once EC2 assigns it, that address leaves the VPC as it is.
    let eni = primary_eni(&sim, "i-node");
    assign(&sim.ec2(), &eni, "10.0.0.99").await;
    assert_eq!(
        tcp_source(&node, OUTSIDE_HOST, 8443),
        Some(ip("10.0.0.99").into())
    );
    assert!(watched(&outside) > 0);

    // The sending ENI's egress rules apply to the outside like to any peer.
    set_groups(&sim.ec2(), &eni, &["sg-no-egress"]).await;
    let denied = format!("out-{eni} denied");
    let before = sim_util::fabric_counter(&sim.info.fabric_netns, &denied);
    assert_eq!(tcp_source(&node, OUTSIDE_HOST, 8443), None);
    assert!(sim_util::fabric_counter(&sim.info.fabric_netns, &denied) > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_reaches_an_instance_only_when_a_group_admits_it() {
    require_root();
    let mut sim = Sim::start(&outside_scenario());
    let node = sim.netns("i-node");
    let outside = outside_netns(&sim);
    let eni = primary_eni(&sim, "i-node");
    let _service = TcpService::start(&node, 5432).expect("service in the node netns");
    let target = "10.0.0.10:5432";

    // sg-vpc admits the VPC only: the node's ingress chain drops the outside's SYN.
    let denied = format!("in-{eni} denied");
    let before = sim_util::fabric_counter(&sim.info.fabric_netns, &denied);
    assert!(!tcp_reaches(&outside, "10.0.0.10", 5432));
    assert!(!tcp_ok(&outside, target, 1000));
    assert!(sim_util::fabric_counter(&sim.info.fabric_netns, &denied) > before);

    set_groups(&sim.ec2(), &eni, &["sg-vpc", "sg-vpn"]).await;
    assert!(tcp_reaches(&outside, "10.0.0.10", 5432), "sg-vpn admits it");
    assert!(tcp_ok(&outside, target, 2000), "vpc-sim tcp-connect");
    assert_eq!(
        tcp_source(&outside, "10.0.0.10", 5432),
        Some(ip(OUTSIDE_HOST).into()),
        "the gateway translated the outside's address"
    );

    // The outside namespace goes with the simulator.
    assert!(sim.stop().success(), "{}", sim.log());
    assert!(
        !std::path::Path::new(&format!("/var/run/netns/{outside}")).exists(),
        "{outside} left behind"
    );
}

#[test]
fn an_existing_outside_netns_stops_the_start() {
    require_root();
    let prefix = format!("vso{}", std::process::id());
    let squatter = format!("{prefix}-outside");
    exec_status(&["ip", "netns", "add", &squatter]);
    let result = Sim::start_with_prefix(&outside_scenario(), &prefix);
    let fabric_left = std::path::Path::new(&format!("/var/run/netns/{prefix}-fabric")).exists();
    exec_status(&["ip", "netns", "del", &squatter]);
    match result {
        Ok(_) => panic!("vpc-sim started although {squatter} already existed"),
        Err(log) => assert!(log.contains("already exists"), "{log}"),
    }
    assert!(!fabric_left, "vpc-sim created its fabric before refusing");
}

fn exec_status(argv: &[&str]) {
    let status = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .expect("run command");
    assert!(status.success(), "{argv:?} failed");
}
