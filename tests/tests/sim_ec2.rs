//! vpc-sim's EC2 API driven by aws-sdk-ec2, checked against the namespaces it manages.
//! Needs root.

mod sim_util;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, NetworkInterfaceStatus, ResourceType, Tag, TagSpecification};
use serde_json::json;
use sim_util::{code, link_with_mac, require_root, route_dsts, scenario, Sim};

const SG: &str = "sg-0aaaaaaaaaaaaaaa1";

fn tag_spec(key: &str, value: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(ResourceType::NetworkInterface)
        .tags(Tag::builder().key(key).value(value).build())
        .build()
}

async fn new_eni(ec2: &aws_sdk_ec2::Client, subnet: &str, secondaries: i32) -> String {
    let out = ec2
        .create_network_interface()
        .subnet_id(subnet)
        .groups(SG)
        .secondary_private_ip_address_count(secondaries)
        .send()
        .await
        .expect("create eni");
    out.network_interface()
        .unwrap()
        .network_interface_id()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eni_lifecycle_shows_up_in_the_instance_netns() {
    require_root();
    let sim = Sim::start(&scenario());
    let ec2 = sim.ec2();
    let node_ns = sim.netns("i-large");
    let fabric_ns = sim.info.fabric_netns.clone();

    // Create: an available ENI with the tags, groups and addresses asked for.
    let created = ec2
        .create_network_interface()
        .subnet_id("subnet-a")
        .description("aws-K8S-i-large")
        .groups(SG)
        .secondary_private_ip_address_count(2)
        .tag_specifications(tag_spec("node.k8s.amazonaws.com/instance_id", "i-large"))
        .send()
        .await
        .expect("create eni");
    let eni = created.network_interface().unwrap();
    let eni_id = eni.network_interface_id().unwrap().to_string();
    let mac = eni.mac_address().unwrap().to_string();
    assert!(eni_id.starts_with("eni-") && eni_id.len() == 21, "{eni_id}");
    assert_eq!(eni.status(), Some(&NetworkInterfaceStatus::Available));
    assert_eq!(eni.subnet_id(), Some("subnet-a"));
    assert_eq!(eni.vpc_id(), Some("vpc-0123456789abcdef0"));
    assert_eq!(eni.availability_zone(), Some("us-west-2a"));
    assert_eq!(eni.description(), Some("aws-K8S-i-large"));
    assert_eq!(eni.groups()[0].group_id(), Some(SG));
    assert_eq!(eni.groups()[0].group_name(), Some("nodes"));
    assert_eq!(
        eni.tag_set()[0].key(),
        Some("node.k8s.amazonaws.com/instance_id")
    );
    assert_eq!(eni.private_ip_addresses().len(), 3);
    assert_eq!(eni.private_ip_addresses()[0].primary(), Some(true));
    assert_eq!(eni.private_ip_addresses()[1].primary(), Some(false));
    assert!(mac.starts_with("02:"));
    assert!(link_with_mac(&node_ns, &mac).is_none());

    // Attach: eth1 with the ENI's MAC appears in the instance, down and without addresses.
    let attached = ec2
        .attach_network_interface()
        .network_interface_id(&eni_id)
        .instance_id("i-large")
        .device_index(1)
        .network_card_index(0)
        .send()
        .await
        .expect("attach");
    let attachment_id = attached.attachment_id().unwrap().to_string();
    assert!(attachment_id.starts_with("eni-attach-"));
    let link = link_with_mac(&node_ns, &mac).expect("link with the ENI MAC in the instance");
    assert_eq!(link["ifname"], "eth1");
    assert_eq!(link["mtu"], 9001);
    assert!(
        !link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link}"
    );
    assert!(sim_util::ipv4_addrs(&node_ns, "eth1").is_empty());

    ec2.modify_network_interface_attribute()
        .network_interface_id(&eni_id)
        .attachment(
            aws_sdk_ec2::types::NetworkInterfaceAttachmentChanges::builder()
                .attachment_id(&attachment_id)
                .delete_on_termination(true)
                .build(),
        )
        .send()
        .await
        .expect("modify attachment");

    // Assign: the fabric routes the new addresses to this ENI.
    let assigned = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni_id)
        .secondary_private_ip_address_count(3)
        .send()
        .await
        .expect("assign");
    let new_ips: Vec<String> = assigned
        .assigned_private_ip_addresses()
        .iter()
        .map(|a| a.private_ip_address().unwrap().to_string())
        .collect();
    assert_eq!(new_ips.len(), 3);
    let routes = route_dsts(&fabric_ns);
    for ip in &new_ips {
        assert!(
            routes.contains(ip),
            "fabric has no route for {ip}: {routes:?}"
        );
    }

    // Describe: attachment and all six addresses, primary first.
    let described = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni_id)
        .send()
        .await
        .expect("describe");
    let eni = &described.network_interfaces()[0];
    assert_eq!(eni.status(), Some(&NetworkInterfaceStatus::InUse));
    let att = eni.attachment().unwrap();
    assert_eq!(att.attachment_id(), Some(attachment_id.as_str()));
    assert_eq!(att.instance_id(), Some("i-large"));
    assert_eq!(att.device_index(), Some(1));
    assert_eq!(att.delete_on_termination(), Some(true));
    let ips: Vec<&str> = eni
        .private_ip_addresses()
        .iter()
        .map(|a| a.private_ip_address().unwrap())
        .collect();
    assert_eq!(ips.len(), 6);
    assert_eq!(ips[0], eni.private_ip_address().unwrap());

    // Unassign: gone from EC2 and from the fabric.
    ec2.unassign_private_ip_addresses()
        .network_interface_id(&eni_id)
        .private_ip_addresses(&new_ips[0])
        .private_ip_addresses(&new_ips[1])
        .send()
        .await
        .expect("unassign");
    let described = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni_id)
        .send()
        .await;
    assert_eq!(
        described.unwrap().network_interfaces()[0]
            .private_ip_addresses()
            .len(),
        4
    );
    let routes = route_dsts(&fabric_ns);
    assert!(
        !routes.contains(&new_ips[0]) && routes.contains(&new_ips[2]),
        "{routes:?}"
    );

    // Detach and delete: the link goes, then the ENI.
    ec2.detach_network_interface()
        .attachment_id(&attachment_id)
        .send()
        .await
        .expect("detach");
    assert!(
        link_with_mac(&node_ns, &mac).is_none(),
        "link still in the instance after detach"
    );
    ec2.delete_network_interface()
        .network_interface_id(&eni_id)
        .send()
        .await
        .expect("delete");
    let gone = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni_id)
        .send()
        .await;
    assert_eq!(code(gone), "InvalidNetworkInterfaceID.NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_limits_and_errors() {
    require_root();
    let sim = Sim::start(&scenario());
    let ec2 = sim.ec2();

    // t3.small: 4 IPv4 addresses per ENI counting the primary.
    let eni = new_eni(&ec2, "subnet-a", 0).await;
    ec2.attach_network_interface()
        .network_interface_id(&eni)
        .instance_id("i-small")
        .device_index(1)
        .send()
        .await
        .expect("attach");
    let too_many = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(4)
        .send()
        .await;
    assert_eq!(code(too_many), "PrivateIpAddressLimitExceeded");
    let mixed = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(1)
        .ipv4_prefix_count(1)
        .send()
        .await;
    assert_eq!(code(mixed), "InvalidParameterCombination");

    // Device index in use, then the ENI limit (3 on t3.small).
    let second = new_eni(&ec2, "subnet-a", 0).await;
    let attach = |id: String, index: i32| {
        ec2.attach_network_interface()
            .network_interface_id(id)
            .instance_id("i-small")
            .device_index(index)
            .send()
    };
    assert_eq!(
        code(attach(second.clone(), 1).await),
        "InvalidParameterValue"
    );
    attach(second.clone(), 2).await.expect("attach second");
    let third = new_eni(&ec2, "subnet-a", 0).await;
    assert_eq!(
        code(attach(third.clone(), 3).await),
        "AttachmentLimitExceeded"
    );

    // Deleting an attached ENI, and ids that do not exist.
    let in_use = ec2
        .delete_network_interface()
        .network_interface_id(&eni)
        .send()
        .await;
    assert_eq!(code(in_use), "InvalidNetworkInterface.InUse");
    let unknown = ec2
        .delete_network_interface()
        .network_interface_id("eni-0000000000000000f")
        .send()
        .await;
    assert_eq!(code(unknown), "InvalidNetworkInterfaceID.NotFound");
    let unknown = ec2
        .detach_network_interface()
        .attachment_id("eni-attach-00000000000000000")
        .send()
        .await;
    assert_eq!(code(unknown), "InvalidAttachmentID.NotFound");
    let unknown = ec2
        .create_network_interface()
        .subnet_id("subnet-nope")
        .send()
        .await;
    assert_eq!(code(unknown), "InvalidSubnetID.NotFound");

    // A /28 holds 11 addresses once AWS's five reserved ones are taken out.
    let exhausted = ec2
        .create_network_interface()
        .subnet_id("subnet-tiny")
        .secondary_private_ip_address_count(11)
        .send()
        .await;
    assert_eq!(code(exhausted), "InsufficientFreeAddressesInSubnet");
    let subnets = ec2
        .describe_subnets()
        .subnet_ids("subnet-tiny")
        .send()
        .await
        .unwrap();
    assert_eq!(subnets.subnets()[0].available_ip_address_count(), Some(11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_filters_and_pages() {
    require_root();
    let sim = Sim::start(&scenario());
    let ec2 = sim.ec2();

    let mut created = BTreeSet::new();
    for _ in 0..12 {
        let out = ec2
            .create_network_interface()
            .subnet_id("subnet-a")
            .tag_specifications(tag_spec("node.k8s.amazonaws.com/instance_id", "i-large"))
            .send()
            .await
            .expect("create");
        created.insert(
            out.network_interface()
                .unwrap()
                .network_interface_id()
                .unwrap()
                .to_string(),
        );
    }

    // Page by hand: 5 + 5 + 2 with the tag-key filter the leaked-ENI sweep uses.
    let filters = [
        Filter::builder()
            .name("tag-key")
            .values("node.k8s.amazonaws.com/instance_id")
            .build(),
        Filter::builder().name("status").values("available").build(),
        Filter::builder()
            .name("vpc-id")
            .values("vpc-0123456789abcdef0")
            .build(),
    ];
    let mut seen = BTreeSet::new();
    let mut sizes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = ec2
            .describe_network_interfaces()
            .set_filters(Some(filters.to_vec()))
            .max_results(5)
            .set_next_token(token.clone())
            .send()
            .await
            .expect("page");
        sizes.push(page.network_interfaces().len());
        seen.extend(
            page.network_interfaces()
                .iter()
                .map(|e| e.network_interface_id().unwrap().to_string()),
        );
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(sizes, [5, 5, 2]);
    assert_eq!(seen, created);

    // The SDK's paginator walks the same pages.
    let all: Vec<_> = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("tag:node.k8s.amazonaws.com/instance_id")
                .values("i-large")
                .build(),
        )
        .max_results(5)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("paginate");
    assert_eq!(all.len(), 12);

    let attached = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values("i-small")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(attached.network_interfaces().len(), 1);
    assert_eq!(
        attached.network_interfaces()[0].private_ip_address(),
        Some("10.0.0.10")
    );

    let bad = ec2
        .describe_network_interfaces()
        .max_results(3)
        .send()
        .await;
    assert_eq!(code(bad), "InvalidParameterValue");

    // Subnets by zone, with their free address counts.
    let subnets = ec2
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("vpc-id")
                .values("vpc-0123456789abcdef0")
                .build(),
        )
        .filters(
            Filter::builder()
                .name("availability-zone")
                .values("us-west-2a")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let ids: Vec<&str> = subnets
        .subnets()
        .iter()
        .map(|s| s.subnet_id().unwrap())
        .collect();
    assert_eq!(ids, ["subnet-a", "subnet-tiny"]);
    // 251 usable, minus two instances and twelve ENIs.
    assert_eq!(
        subnets.subnets()[0].available_ip_address_count(),
        Some(251 - 14)
    );
    assert_eq!(subnets.subnets()[0].cidr_block(), Some("10.0.0.0/24"));

    let types = ec2
        .describe_instance_types()
        .instance_types(aws_sdk_ec2::types::InstanceType::M5Large)
        .send()
        .await
        .unwrap();
    let info = types.instance_types()[0].network_info().unwrap();
    assert_eq!(info.maximum_network_interfaces(), Some(3));
    assert_eq!(info.ipv4_addresses_per_interface(), Some(10));
    assert_eq!(
        info.network_cards()[0].maximum_network_interfaces(),
        Some(3)
    );
    assert_eq!(
        types.instance_types()[0].hypervisor(),
        Some(&aws_sdk_ec2::types::InstanceTypeHypervisor::Nitro)
    );

    let reservations = ec2
        .describe_instances()
        .instance_ids("i-small")
        .send()
        .await
        .unwrap();
    let instance = &reservations.reservations()[0].instances()[0];
    assert_eq!(instance.private_ip_address(), Some("10.0.0.10"));
    let nic = &instance.network_interfaces()[0];
    assert_eq!(nic.attachment().unwrap().device_index(), Some(0));
    assert_eq!(
        nic.mac_address(),
        Some(sim.instance("i-small").primary_mac.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_call_counters() {
    require_root();
    let sim = Sim::start(&scenario());
    let eni = new_eni(&sim.ec2(), "subnet-a", 0).await;
    sim.control("POST", "/sim/calls/reset", None);

    // Two throttles: the SDK's standard retry gets through on the third attempt.
    let fault =
        json!({"action": "AttachNetworkInterface", "error": "RequestLimitExceeded", "times": 2});
    sim.control("POST", "/sim/faults", Some(&fault));
    sim.ec2()
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id("i-large")
        .device_index(1)
        .send()
        .await
        .expect("attach after retries");
    assert_eq!(
        sim.control("GET", "/sim/calls", None)["AttachNetworkInterface"],
        3
    );

    // Without retries the client sees the throttle as EC2 sends it: code and HTTP 503.
    sim.control(
        "POST",
        "/sim/faults",
        Some(&json!({"action": "DescribeSubnets", "error": "RequestLimitExceeded"})),
    );
    let err = sim
        .ec2_no_retry()
        .describe_subnets()
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(code(Err::<(), _>(err)), "RequestLimitExceeded");

    // A delay holds the answer back.
    sim.control(
        "POST",
        "/sim/faults",
        Some(&json!({"action": "DescribeSubnets", "delayMs": 600})),
    );
    let started = Instant::now();
    sim.ec2()
        .describe_subnets()
        .send()
        .await
        .expect("delayed call");
    assert!(started.elapsed() >= Duration::from_millis(600));

    let calls = sim.control("GET", "/sim/calls", None);
    assert_eq!(calls["DescribeSubnets"], 2);
    sim.control("POST", "/sim/calls/reset", None);
    assert_eq!(sim.control("GET", "/sim/calls", None), json!({}));

    let state = sim.control("GET", "/sim/state", None);
    let eni_state = state["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == eni.as_str())
        .unwrap();
    assert_eq!(eni_state["attachment"]["instanceId"], "i-large");
    assert_eq!(eni_state["attachment"]["deviceIndex"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_requests_are_refused() {
    require_root();
    let sim = Sim::start(&scenario());
    let addr = sim
        .info
        .ec2_endpoint
        .trim_start_matches("http://")
        .to_string();
    let body = "Action=DescribeSubnets&Version=2016-11-15";
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_http(&addr, &request);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("<Code>AuthFailure</Code>") && answer.contains("<RequestID>"),
        "{answer}"
    );
}

fn raw_http(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

#[test]
fn imds_answers_inside_the_instance_netns() {
    require_root();
    let sim = Sim::start(&scenario());
    let ns = sim.netns("i-large");
    let primary_mac = sim.instance("i-large").primary_mac.clone();

    // Attach a second ENI with a prefix so IMDS has more than the primary to show.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (eni, mac) = runtime.block_on(async {
        let ec2 = sim.ec2();
        let out = ec2
            .create_network_interface()
            .subnet_id("subnet-a")
            .groups(SG)
            .ipv4_prefix_count(1)
            .send()
            .await
            .unwrap();
        let eni = out.network_interface().unwrap();
        let (id, mac) = (
            eni.network_interface_id().unwrap().to_string(),
            eni.mac_address().unwrap().to_string(),
        );
        ec2.attach_network_interface()
            .network_interface_id(&id)
            .instance_id("i-large")
            .device_index(2)
            .send()
            .await
            .unwrap();
        (id, mac)
    });

    let eni_mac = mac.clone();
    let found = sim_util::in_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let imds = aws_config::imds::Client::builder()
                .endpoint("http://127.0.0.1:1338")
                .unwrap()
                .build();
            let get = |path: &'static str| {
                let imds = imds.clone();
                async move {
                    String::from(
                        imds.get(path)
                            .await
                            .unwrap_or_else(|e| panic!("{path}: {e}")),
                    )
                }
            };
            let mut found = vec![
                get("/latest/meta-data/instance-id").await,
                get("/latest/meta-data/instance-type").await,
                get("/latest/meta-data/local-ipv4").await,
                get("/latest/meta-data/mac").await,
                get("/latest/meta-data/placement/availability-zone").await,
                get("/latest/meta-data/network/interfaces/macs/").await,
            ];
            let mac_base = format!("/latest/meta-data/network/interfaces/macs/{eni_mac}");
            for field in [
                "device-number",
                "interface-id",
                "ipv4-prefix",
                "subnet-ipv4-cidr-block",
                "vpc-ipv4-cidr-blocks",
                "security-group-ids",
            ] {
                found.push(String::from(
                    imds.get(format!("{mac_base}/{field}")).await.unwrap(),
                ));
            }
            let region = aws_config::imds::region::ImdsRegionProvider::builder()
                .imds_client(imds.clone())
                .build()
                .region()
                .await;
            found.push(region.map(|r| r.to_string()).unwrap_or_default());
            let doc = get("/latest/dynamic/instance-identity/document").await;
            let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
            found.push(doc["region"].as_str().unwrap().to_string());

            // Role credentials from IMDS sign a call to the EC2 endpoint inside the instance.
            use aws_sdk_ec2::config::ProvideCredentials;
            let creds = aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                .imds_client(imds.clone())
                .build()
                .provide_credentials()
                .await
                .expect("imds credentials");
            let config = aws_sdk_ec2::Config::builder()
                .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
                .region(aws_sdk_ec2::config::Region::new("us-west-2"))
                .credentials_provider(creds)
                .endpoint_url("http://127.0.0.1:8773")
                .build();
            let subnets = aws_sdk_ec2::Client::from_conf(config)
                .describe_subnets()
                .send()
                .await
                .unwrap();
            found.push(subnets.subnets().len().to_string());
            found
        })
    });
    assert_eq!(found[0], "i-large");
    assert_eq!(found[1], "m5.large");
    assert_eq!(found[2], "10.0.0.11");
    assert_eq!(found[3], primary_mac);
    assert_eq!(found[4], "us-west-2a");
    assert_eq!(found[5], format!("{primary_mac}/\n{mac}/"));
    assert_eq!(found[6], "2");
    assert_eq!(found[7], eni);
    assert!(found[8].ends_with("/28"), "{}", found[8]);
    assert_eq!(found[9], "10.0.0.0/24");
    assert_eq!(found[10], "10.0.0.0/16");
    assert_eq!(found[11], SG);
    assert_eq!(found[12], "us-west-2");
    assert_eq!(found[13], "us-west-2");
    assert_eq!(found[14], "3");

    // Without a token IMDSv2 refuses.
    let answer = sim_util::in_netns(&ns, || {
        raw_http(
            "127.0.0.1:1338",
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    });
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[test]
fn sigterm_removes_everything_and_two_sims_coexist() {
    require_root();
    let mut one = Sim::start(&scenario());
    let mut two = Sim::start(&scenario());
    assert_ne!(one.info.fabric_netns, two.info.fabric_netns);
    assert_ne!(one.info.ec2_endpoint, two.info.ec2_endpoint);
    assert!(one.sim_json().exists());
    let written: harness::sim::SimInfo =
        serde_json::from_slice(&std::fs::read(one.sim_json()).unwrap()).unwrap();
    assert_eq!(written, one.info);

    // Same addresses in both VPCs, each in its own namespaces.
    let db = "10.0.1.20".parse().unwrap();
    assert!(sim_util::ping(&one.netns("i-small"), db, None));
    assert!(sim_util::ping(&two.netns("i-small"), db, None));

    let mut names = vec![one.info.fabric_netns.clone()];
    names.extend(one.info.instances.iter().map(|i| i.netns.clone()));
    assert!(one.stop().success(), "{}", one.log());
    for name in &names {
        assert!(
            !std::path::Path::new(&format!("/var/run/netns/{name}")).exists(),
            "{name} left behind"
        );
    }
    assert!(!one.sim_json().exists());
    assert!(
        sim_util::ping(&two.netns("i-small"), db, None),
        "second simulator lost its datapath"
    );
    assert!(two.stop().success());
}

#[test]
fn startup_failure_leaves_nothing_behind() {
    require_root();
    let prefix = format!("vsf{}", std::process::id());
    let squatter = format!("{prefix}-i-db");
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &squatter])
        .status()
        .unwrap();
    assert!(status.success());
    let result = Sim::start_with_prefix(&scenario(), &prefix);
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &squatter])
        .status();
    let log = match result {
        Ok(_) => panic!("vpc-sim started although {squatter} already existed"),
        Err(log) => log,
    };
    assert!(log.contains("already exists"), "{log}");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let ours: Vec<&str> = listed.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(
        ours.len(),
        1,
        "only the pre-existing netns may remain: {ours:?}"
    );
}
