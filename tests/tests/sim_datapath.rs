//! vpc-sim's datapath: packets travel between instances the way the VPC carries them, only to
//! addresses EC2 assigned and only from addresses the sending ENI owns. Needs root.

mod sim_util;

use std::net::Ipv4Addr;

use aws_sdk_ec2::Client;
use sim_util::{exec_ok, ping, require_root, scenario, Sim};

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
    let script = format!(
        "table ip watch {{\n chain input {{\n type filter hook input priority 0;\n \
         ip saddr {src} icmp type echo-request counter\n }}\n}}\n"
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

fn echo_requests_seen(netns: &str) -> u64 {
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
    assert_eq!(
        echo_requests_seen(&db),
        0,
        "spoofed packet reached the host"
    );
    assert!(
        fabric_drops(&sim) > drops,
        "the fabric did not count the drop"
    );

    // The owner of that address gets through, so the counter does count.
    assert!(ping(&large, ip("10.0.1.20"), None));
    assert_eq!(echo_requests_seen(&db), 1);

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
