//! Source NAT of pods' traffic, on the wire: the simulated VPC's outside host and database
//! report the source address each connection arrived with. Pods on the primary ENI and on a
//! secondary ENI, with aws-node's defaults, with AWS_VPC_K8S_CNI_EXTERNALSNAT and with
//! AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS. Needs root (namespaces, iptables); fails without it.
//! Branch pods of both enforcing modes are covered by the database scenario (sgp_database_uml).

mod sim_util;

use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use harness::demo::demo_scenario;
use harness::netns::{exec_in_ok, require_root, tcp_source, TcpService};
use harness::node::{result_ip, Node, PodNs};

const OUTSIDE_PORT: u16 = 443;
const DB_PORT: u16 = 5432;
/// Most pods to add before both kinds of ENI hold one (m5.large: 9 addresses per ENI).
const MAX_PODS: usize = 12;

struct Placed {
    pod: PodNs,
    ip: IpAddr,
    secondary: bool,
}

/// Adds pods until one has an address of the primary ENI and one of a secondary ENI.
fn pods_on_both_kinds_of_eni(node: &Node) -> Vec<Placed> {
    let mut placed: Vec<Placed> = Vec::new();
    for i in 0..MAX_PODS {
        let pod = node
            .pod(&format!("snat{i}"), &format!("c-snat-{i}"))
            .unwrap();
        let ip = result_ip(&node.add(&pod.pod));
        let secondary = node.rules_for(&ip).iter().any(|r| r["priority"] == 1536);
        placed.push(Placed {
            pod,
            ip: ip.parse().unwrap(),
            secondary,
        });
        if placed.iter().any(|p| p.secondary) && placed.iter().any(|p| !p.secondary) {
            return placed;
        }
    }
    panic!("no primary and secondary ENI addresses after {MAX_PODS} pods");
}

/// The two pods of interest: the first on the primary ENI and the first on a secondary.
fn one_of_each(placed: &[Placed]) -> [&Placed; 2] {
    let primary = placed.iter().find(|p| !p.secondary).unwrap();
    let secondary = placed.iter().find(|p| p.secondary).unwrap();
    [primary, secondary]
}

fn eni_kind(p: &Placed) -> &'static str {
    if p.secondary {
        "secondary"
    } else {
        "primary"
    }
}

/// The source address the outside host saw from each pod, next to what `want` says it
/// should be; the list of mismatches.
fn outside_mismatches(
    node: &Node,
    placed: &[Placed],
    want: impl Fn(&Placed) -> IpAddr,
) -> Vec<String> {
    let outside = node
        .vpc
        .info
        .outside
        .as_ref()
        .expect("the demo VPC has an outside host");
    let host = outside.addresses[0].clone();
    let _service = TcpService::start(&outside.netns, OUTSIDE_PORT).unwrap();
    one_of_each(placed)
        .into_iter()
        .filter_map(|p| {
            let seen = tcp_source(&p.pod.ns.name, &host, OUTSIDE_PORT);
            let expected = want(p);
            (seen != Some(expected)).then(|| {
                format!(
                    "pod {} on the {} ENI reached {host} from {seen:?}, not {expected}",
                    p.ip,
                    eni_kind(p)
                )
            })
        })
        .collect()
}

#[test]
fn pods_leave_the_vpc_with_the_node_address_and_keep_their_own_inside() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let node_ip: IpAddr = node.instance.primary_ip.parse().unwrap();
    let placed = pods_on_both_kinds_of_eni(&node);
    let wrong = outside_mismatches(&node, &placed, |_| node_ip);
    assert!(
        wrong.is_empty(),
        "{wrong:#?}\nipamd log:\n{}",
        node.ipamd.log_tail(20)
    );

    let db = node
        .vpc
        .info
        .instances
        .iter()
        .find(|i| i.role == "host")
        .unwrap();
    let _db = TcpService::start(&db.netns, DB_PORT).unwrap();
    for p in one_of_each(&placed) {
        let seen = tcp_source(&p.pod.ns.name, &db.primary_ip, DB_PORT);
        assert_eq!(
            seen,
            Some(p.ip),
            "pod on the {} ENI reached the database in the VPC",
            eni_kind(p)
        );
    }
}

fn assert_pods_keep_their_address_outside(node: &Node) {
    let placed = pods_on_both_kinds_of_eni(node);
    let wrong = outside_mismatches(node, &placed, |p| p.ip);
    assert!(
        wrong.is_empty(),
        "{wrong:#?}\nipamd log:\n{}",
        node.ipamd.log_tail(20)
    );
}

#[test]
fn external_snat_leaves_the_pod_address_to_the_vpc() {
    require_root();
    let node = Node::start(&[("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")]).unwrap();
    assert_pods_keep_their_address_outside(&node);
}

#[test]
fn excluded_cidrs_keep_the_pod_address() {
    require_root();
    let node = Node::start(&[(
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
        "192.0.2.0/24, 203.0.113.0/24",
    )])
    .unwrap();
    assert_pods_keep_their_address_outside(&node);
}

/// A CIDR associated with the VPC after ipamd started keeps pods' addresses too, once ipamd
/// has read the VPC's CIDRs from instance metadata again (every 30 s, as aws-node does).
#[test]
fn a_cidr_associated_later_is_exempted_without_a_restart() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let vpc_id = demo_scenario().unwrap()["vpc"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ec2 = sim_util::ec2_client(&node.vpc.info.ec2_endpoint, RetryConfig::standard());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(
        ec2.associate_vpc_cidr_block()
            .vpc_id(vpc_id)
            .cidr_block("10.1.0.0/16")
            .send(),
    )
    .expect("associate a second vpc cidr");
    let exempt = "-A VPC-CNI-SNAT -d 10.1.0.0/16 -j RETURN";
    harness::process::wait_for(
        "ipamd to exempt the new cidr",
        Duration::from_secs(45),
        || {
            let saved = exec_in_ok(node.netns(), &["iptables-nft-save"]).ok()?;
            saved.contains(exempt).then_some(saved)
        },
    )
    .map(|saved| {
        assert!(
            saved.contains("-A VPC-CNI-SNAT -d 10.0.0.0/16 -j RETURN"),
            "{saved}"
        );
        assert!(
            saved.contains("-A VPC-CNI-EGRESS -d 10.1.0.0/16 -j RETURN"),
            "{saved}"
        );
        assert_eq!(
            saved.matches("-j VPC-CNI-SNAT").count(),
            1,
            "one jump: {saved}"
        );
    })
    .unwrap_or_else(|e| panic!("{e}\nipamd log:\n{}", node.ipamd.log_tail(20)));
}
