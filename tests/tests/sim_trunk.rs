//! Trunk ENIs and security groups in vpc-sim on the host kernel: the trunking API through
//! aws-sdk-ec2 with EC2's limits and errors, and security groups enforced in the fabric between
//! instances. The host kernel makes no 802.1Q links, so branches carry no traffic here (see
//! sim_vlan_uml for that). Needs root.

mod sim_util;

use aws_sdk_ec2::types::{
    Filter, InterfaceProtocolType, NetworkInterfaceCreationType, NetworkInterfaceStatus,
    NetworkInterfaceType,
};
use aws_sdk_ec2::Client;
use serde_json::{json, Value};
use sim_util::{
    code, example, fabric_counter, ping, require_root, set_groups, tcp_ok, Listener, Sim,
};

const NODE: &str = "i-0c0ffee0000000001";
const DB: &str = "i-0d0000000000000db";
const APP: &str = "i-0a0000000000000a1";
const NODE_SUBNET: &str = "subnet-0a11111111111111a";
const POD_SUBNET: &str = "subnet-0a22222222222222b";
const DB_IP: &str = "10.0.1.20";

async fn create_eni(ec2: &Client, subnet: &str, group: &str, trunk: bool) -> (String, String) {
    let mut req = ec2
        .create_network_interface()
        .subnet_id(subnet)
        .groups(group);
    if trunk {
        req = req.interface_type(NetworkInterfaceCreationType::Trunk);
    }
    let eni = req.send().await.expect("create eni");
    let eni = eni.network_interface().unwrap();
    (
        eni.network_interface_id().unwrap().to_string(),
        eni.private_ip_address().unwrap().to_string(),
    )
}

/// A trunk on the node at device index 1.
async fn attached_trunk(ec2: &Client) -> String {
    let (trunk, _) = create_eni(ec2, NODE_SUBNET, "sg-node", true).await;
    ec2.attach_network_interface()
        .network_interface_id(&trunk)
        .instance_id(NODE)
        .device_index(1)
        .send()
        .await
        .expect("attach trunk");
    trunk
}

async fn associate(ec2: &Client, branch: &str, trunk: &str, vlan: i32) -> String {
    let out = ec2
        .associate_trunk_interface()
        .branch_interface_id(branch)
        .trunk_interface_id(trunk)
        .vlan_id(vlan)
        .send()
        .await
        .unwrap_or_else(|e| panic!("associate {branch} on vlan {vlan}: {e:?}"));
    let a = out.interface_association().expect("interfaceAssociation");
    assert_eq!(a.branch_interface_id(), Some(branch));
    assert_eq!(a.trunk_interface_id(), Some(trunk));
    assert_eq!(a.interface_protocol(), Some(&InterfaceProtocolType::Vlan));
    assert_eq!(a.vlan_id(), Some(vlan));
    a.association_id().unwrap().to_string()
}

async fn eni_type(ec2: &Client, id: &str) -> (NetworkInterfaceType, NetworkInterfaceStatus) {
    let out = ec2
        .describe_network_interfaces()
        .network_interface_ids(id)
        .send()
        .await
        .expect("describe eni");
    let eni = &out.network_interfaces()[0];
    (
        eni.interface_type().unwrap().clone(),
        eni.status().unwrap().clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunk_api_follows_ec2() {
    require_root();
    let sim = Sim::start(&example("vpc-sgp.json"));
    let ec2 = sim.ec2();
    let trunk = attached_trunk(&ec2).await;
    let (branch, _) = create_eni(&ec2, POD_SUBNET, "sg-catalog", false).await;

    let first = associate(&ec2, &branch, &trunk, 5).await;
    assert!(
        first.starts_with("trunk-assoc-") && first.len() == 12 + 17,
        "{first}"
    );
    assert_eq!(
        eni_type(&ec2, &branch).await,
        (NetworkInterfaceType::Branch, NetworkInterfaceStatus::InUse)
    );

    let (other, _) = create_eni(&ec2, POD_SUBNET, "sg-catalog", false).await;
    refuses_taken_and_reserved_vlans(&ec2, &trunk, &branch, &other).await;

    // m5.large carries nine branches.
    let mut ids = vec![first.clone()];
    for vlan in 6..=13 {
        let (b, _) = create_eni(&ec2, POD_SUBNET, "sg-catalog", false).await;
        ids.push(associate(&ec2, &b, &trunk, vlan).await);
    }
    let full = ec2
        .associate_trunk_interface()
        .branch_interface_id(&other)
        .trunk_interface_id(&trunk)
        .vlan_id(14)
        .send()
        .await;
    assert_eq!(code(full), "BranchInterfaceLimitExceeded");

    describe_pages_and_filters(&ec2, &trunk, &branch, &ids).await;

    // Disassociate answers true; the branch is a plain, available interface again.
    let out = ec2
        .disassociate_trunk_interface()
        .association_id(&first)
        .send()
        .await
        .expect("disassociate");
    assert_eq!(out.r#return(), Some(true));
    assert_eq!(
        eni_type(&ec2, &branch).await,
        (
            NetworkInterfaceType::Interface,
            NetworkInterfaceStatus::Available
        )
    );
    let gone = ec2
        .disassociate_trunk_interface()
        .association_id(&first)
        .send()
        .await;
    assert_eq!(code(gone), "InvalidAssociationID.NotFound");
    // The freed slot takes the branch that did not fit.
    associate(&ec2, &other, &trunk, 14).await;
}

/// VLAN ids are unique per trunk and within 802.1Q's 1..=4094 (`branch` holds VLAN 5), and a
/// branch rides on one VLAN only.
async fn refuses_taken_and_reserved_vlans(ec2: &Client, trunk: &str, branch: &str, other: &str) {
    let dup = ec2
        .associate_trunk_interface()
        .branch_interface_id(other)
        .trunk_interface_id(trunk)
        .vlan_id(5)
        .send()
        .await;
    assert_eq!(code(dup), "InvalidVlanId.Duplicate");
    for bad in [0, 4095] {
        let r = ec2
            .associate_trunk_interface()
            .branch_interface_id(other)
            .trunk_interface_id(trunk)
            .vlan_id(bad)
            .send()
            .await;
        assert_eq!(code(r), "InvalidParameterValue", "vlan {bad}");
    }
    // A branch already riding on the trunk cannot take a second VLAN.
    let again = ec2
        .associate_trunk_interface()
        .branch_interface_id(branch)
        .trunk_interface_id(trunk)
        .vlan_id(6)
        .send()
        .await;
    assert_eq!(code(again), "InvalidNetworkInterface.InUse");
}

async fn describe_pages_and_filters(ec2: &Client, trunk: &str, branch: &str, ids: &[String]) {
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = ec2
            .describe_trunk_interface_associations()
            .max_results(5)
            .set_next_token(token)
            .send()
            .await
            .expect("describe associations");
        let items = page.interface_associations();
        assert!(items.len() <= 5);
        seen.extend(
            items
                .iter()
                .map(|a| a.association_id().unwrap().to_string()),
        );
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(seen, expected);

    let filter = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
    let by_trunk = ec2
        .describe_trunk_interface_associations()
        .filters(filter(
            "trunk-interface-association.trunk-interface-id",
            trunk,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(by_trunk.interface_associations().len(), ids.len());
    let by_branch = ec2
        .describe_trunk_interface_associations()
        .filters(filter(
            "trunk-interface-association.branch-interface-id",
            branch,
        ))
        .send()
        .await
        .unwrap();
    let hits = by_branch.interface_associations();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].association_id(), Some(ids[0].as_str()));
    assert_eq!(hits[0].vlan_id(), Some(5));
    let missing = ec2
        .describe_trunk_interface_associations()
        .association_ids("trunk-assoc-00000000000000000")
        .send()
        .await;
    assert_eq!(code(missing), "InvalidAssociationID.NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunks_need_a_trunking_instance_type_and_branches_delete_freely() {
    require_root();
    let mut scenario = example("vpc-sgp.json");
    scenario["instances"].as_array_mut().unwrap().push(json!({
        "id": "i-0f0000000000000f3", "type": "t3.medium", "subnet": NODE_SUBNET,
        "securityGroups": ["sg-node"], "role": "node"
    }));
    let sim = Sim::start(&scenario);
    let ec2 = sim.ec2();
    let (t3_trunk, _) = create_eni(&ec2, NODE_SUBNET, "sg-node", true).await;
    let refused = ec2
        .attach_network_interface()
        .network_interface_id(&t3_trunk)
        .instance_id("i-0f0000000000000f3")
        .device_index(1)
        .send()
        .await;
    assert_eq!(code(refused), "InvalidParameterValue");

    // A loose trunk carries nothing.
    let (branch, _) = create_eni(&ec2, POD_SUBNET, "sg-catalog", false).await;
    let loose = ec2
        .associate_trunk_interface()
        .branch_interface_id(&branch)
        .trunk_interface_id(&t3_trunk)
        .vlan_id(1)
        .send()
        .await;
    assert_eq!(code(loose), "IncorrectState");

    // EC2 deletes an associated branch, and the association with it.
    let trunk = attached_trunk(&ec2).await;
    let association = associate(&ec2, &branch, &trunk, 3).await;
    ec2.delete_network_interface()
        .network_interface_id(&branch)
        .send()
        .await
        .expect("delete associated branch");
    let gone = ec2
        .describe_trunk_interface_associations()
        .association_ids(&association)
        .send()
        .await;
    assert_eq!(code(gone), "InvalidAssociationID.NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_the_ec2_tool_show_associations() {
    require_root();
    let sim = Sim::start(&example("vpc-sgp.json"));
    let ec2 = sim.ec2();
    let trunk = attached_trunk(&ec2).await;
    let (branch, _) = create_eni(&ec2, POD_SUBNET, "sg-catalog", false).await;
    let association = associate(&ec2, &branch, &trunk, 7).await;

    let state = sim.control("GET", "/sim/state", None);
    let listed = &state["trunkAssociations"][0];
    assert_eq!(listed["id"], association.as_str());
    assert_eq!(listed["trunkInterfaceId"], trunk.as_str());
    assert_eq!(listed["branchInterfaceId"], branch.as_str());
    assert_eq!(listed["vlanId"], 7);
    let eni = state["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == branch.as_str())
        .unwrap();
    assert_eq!(eni["trunkAssociationId"], association.as_str());
    assert_eq!(eni["interfaceType"], "branch");

    // This kernel makes no 802.1Q links: the association lives in the API only, said once.
    assert_eq!(
        state["vlanDatapath"],
        Value::Bool(false),
        "the host kernel was expected to lack 802.1Q"
    );
    assert_eq!(listed["fabricLink"], Value::Null);
    assert_eq!(
        sim.log().matches("makes no 802.1Q links").count(),
        1,
        "{}",
        sim.log()
    );

    ec2_tool_reads_the_association(&sim, &association, &branch);
}

/// The same call through `vpc-sim ec2`, as scripts make it, and an EC2 error through it.
fn ec2_tool_reads_the_association(sim: &Sim, association: &str, branch: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vpc-sim"))
        .args(["ec2", "--sim-json"])
        .arg(sim.sim_json())
        .args(["--get", "vlanId", "--get", "branchInterfaceId"])
        .arg("DescribeTrunkInterfaceAssociations")
        .arg(format!("AssociationId.1={association}"))
        .output()
        .expect("run vpc-sim ec2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("7 {branch}")
    );
    let failed = std::process::Command::new(env!("CARGO_BIN_EXE_vpc-sim"))
        .args(["ec2", "--endpoint", &sim.info.ec2_endpoint])
        .args([
            "DisassociateTrunkInterface",
            "AssociationId=trunk-assoc-nope",
        ])
        .output()
        .expect("run vpc-sim ec2");
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("InvalidAssociationID.NotFound"), "{stderr}");
}

/// vpc-sgp.json with a second host, "app", in the database's subnet and group sg-catalog.
fn sgp_with_app() -> Value {
    let mut scenario = example("vpc-sgp.json");
    scenario["instances"].as_array_mut().unwrap().push(json!({
        "id": APP, "type": "m5.large", "subnet": "subnet-0a33333333333333c",
        "securityGroups": ["sg-catalog"], "role": "host", "privateIp": "10.0.1.30"
    }));
    scenario
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_groups_filter_the_fabric() {
    require_root();
    let sim = Sim::start(&sgp_with_app());
    let ec2 = sim.ec2();
    let (node, db, app) = (sim.netns(NODE), sim.netns(DB), sim.netns(APP));
    let _mysql = Listener::start(&db, 3306);
    let _other = Listener::start(&db, 3307);
    let _app = Listener::start(&app, 3306);
    let db_3306 = format!("{DB_IP}:3306");

    // sg-db admits 3306 from members of sg-catalog, and only 3306.
    assert!(tcp_ok(&app, &db_3306, 3000), "sg-catalog member refused");
    assert!(
        !tcp_ok(&app, &format!("{DB_IP}:3307"), 1500),
        "port 3307 admitted"
    );
    assert!(!tcp_ok(&node, &db_3306, 1500), "sg-node admitted to 3306");
    // ICMP from the VPC is admitted for debugging.
    assert!(ping(&node, DB_IP.parse().unwrap(), None));

    // Stateful: sg-catalog admits nothing inbound, yet db's replies reached app above; a new
    // connection towards app is refused.
    assert!(
        !tcp_ok(&db, "10.0.1.30:3306", 1500),
        "app admitted a new inbound flow"
    );

    // Groups changed through the API apply to the next connection.
    let node_eni = sim.instance(NODE).primary_eni_id.clone();
    set_groups(&ec2, &node_eni, &["sg-node", "sg-catalog"]).await;
    assert!(
        tcp_ok(&node, &db_3306, 3000),
        "node with sg-catalog refused"
    );
    set_groups(&ec2, &node_eni, &["sg-node"]).await;
    assert!(
        !tcp_ok(&node, &db_3306, 1500),
        "node admitted after leaving sg-catalog"
    );

    // The refusals were drops in db's ingress chain, not lost elsewhere.
    let chain = format!("in-{}", sim.instance(DB).primary_eni_id);
    let denied = fabric_counter(&sim.info.fabric_netns, &format!("{chain} denied"));
    assert!(denied > 0, "db's ingress chain counted no drops");
}
