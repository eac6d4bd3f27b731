//! Rules of the VPC model: allocation, limits and the error codes EC2 uses.

use std::net::Ipv4Addr;

use super::api::dispatch;
use super::model::{InterfaceType, Vpc};
use super::ops::{Assign, CreateEni, EniAttribute};
use super::query::Params;
use crate::sim::scenario::Scenario;

fn scenario() -> Scenario {
    serde_json::from_value(serde_json::json!({
        "region": "us-west-2",
        "seed": 42,
        "vpc": {"id": "vpc-1", "cidr": "10.0.0.0/16"},
        "subnets": [
            {"id": "subnet-a", "cidr": "10.0.0.0/24", "az": "us-west-2a"},
            {"id": "subnet-tiny", "cidr": "10.0.9.0/28", "az": "us-west-2a"},
            {"id": "subnet-b", "cidr": "10.0.1.0/24", "az": "us-west-2b"}
        ],
        "securityGroups": [{"id": "sg-1", "name": "nodes"}, {"id": "sg-2", "name": "db"}],
        "instances": [
            {"id": "i-node", "type": "t3.small", "subnet": "subnet-a",
             "securityGroups": ["sg-1"], "role": "node", "privateIp": "10.0.0.10"},
            {"id": "i-db", "type": "m5.large", "subnet": "subnet-b", "role": "host"}
        ]
    }))
    .unwrap()
}

fn vpc() -> Vpc {
    Vpc::from_scenario(&scenario()).unwrap()
}

fn new_eni(vpc: &mut Vpc, subnet: &str) -> String {
    let req = CreateEni {
        subnet_id: subnet.into(),
        groups: vec!["sg-1".into()],
        ..Default::default()
    };
    vpc.create_eni(req).unwrap().id.clone()
}

fn code<T: std::fmt::Debug>(r: Result<T, super::Ec2Error>) -> String {
    r.unwrap_err().code
}

#[test]
fn instances_start_with_a_primary_eni_at_device_zero() {
    let vpc = vpc();
    let eni = vpc.primary_eni("i-node").unwrap();
    assert_eq!(eni.primary_ip(), "10.0.0.10".parse::<Ipv4Addr>().unwrap());
    assert_eq!(eni.status(), "in-use");
    assert!(eni.attachment.as_ref().unwrap().delete_on_termination);
    assert_eq!(eni.groups, ["sg-1"]);
    let db = vpc.primary_eni("i-db").unwrap();
    assert_eq!(db.primary_ip(), "10.0.1.4".parse::<Ipv4Addr>().unwrap());
}

#[test]
fn attach_enforces_eni_limit_and_device_index() {
    let mut vpc = vpc();
    let a = new_eni(&mut vpc, "subnet-a");
    let b = new_eni(&mut vpc, "subnet-a");
    let c = new_eni(&mut vpc, "subnet-a");
    vpc.attach(&a, "i-node", 1, 0).unwrap();
    assert_eq!(
        code(vpc.attach(&b, "i-node", 1, 0)),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(vpc.attach(&a, "i-node", 2, 0)),
        "InvalidNetworkInterface.InUse"
    );
    vpc.attach(&b, "i-node", 2, 0).unwrap();
    // t3.small takes three ENIs, the primary included.
    assert_eq!(
        code(vpc.attach(&c, "i-node", 3, 0)),
        "AttachmentLimitExceeded"
    );
    assert_eq!(
        code(vpc.attach(&c, "i-nope", 3, 0)),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(vpc.attach("eni-nope", "i-node", 3, 0)),
        "InvalidNetworkInterfaceID.NotFound"
    );
    // subnet-b is in another availability zone than i-node.
    let far = new_eni(&mut vpc, "subnet-b");
    assert_eq!(
        code(vpc.attach(&far, "i-node", 3, 0)),
        "InvalidParameterValue"
    );
}

#[test]
fn per_eni_limit_counts_primary_and_prefixes() {
    let mut vpc = vpc();
    let eni = new_eni(&mut vpc, "subnet-a");
    vpc.attach(&eni, "i-node", 1, 0).unwrap();
    // t3.small: 4 IPv4 addresses per ENI, primary included.
    let three = Assign {
        count: Some(3),
        ..Default::default()
    };
    let (ips, _) = vpc.assign(&eni, three).unwrap();
    assert_eq!(ips.len(), 3);
    let one = Assign {
        count: Some(1),
        ..Default::default()
    };
    assert_eq!(code(vpc.assign(&eni, one)), "PrivateIpAddressLimitExceeded");
    vpc.unassign(&eni, &ips[..1], &[]).unwrap();
    let prefix = Assign {
        prefix_count: Some(1),
        ..Default::default()
    };
    let (_, prefixes) = vpc.assign(&eni, prefix.clone()).unwrap();
    assert_eq!(prefixes[0].prefix_len(), 28);
    assert_eq!(
        code(vpc.assign(&eni, prefix)),
        "PrivateIpAddressLimitExceeded"
    );
}

#[test]
fn assign_rejects_mixed_requests_and_taken_addresses() {
    let mut vpc = vpc();
    let eni = new_eni(&mut vpc, "subnet-a");
    let mixed = Assign {
        count: Some(1),
        prefix_count: Some(1),
        ..Default::default()
    };
    assert_eq!(code(vpc.assign(&eni, mixed)), "InvalidParameterCombination");
    assert_eq!(
        code(vpc.assign(&eni, Assign::default())),
        "MissingParameter"
    );
    let taken = Assign {
        ips: vec!["10.0.0.10".parse().unwrap()],
        ..Default::default()
    };
    assert_eq!(code(vpc.assign(&eni, taken)), "InvalidIPAddress.InUse");
    let outside = Assign {
        ips: vec!["10.0.1.50".parse().unwrap()],
        ..Default::default()
    };
    assert_eq!(code(vpc.assign(&eni, outside)), "InvalidParameterValue");
    let given = Assign {
        ips: vec!["10.0.0.200".parse().unwrap()],
        ..Default::default()
    };
    vpc.assign(&eni, given).unwrap();
    assert!(vpc
        .eni(&eni)
        .unwrap()
        .private_ips
        .contains(&"10.0.0.200".parse().unwrap()));
}

#[test]
fn subnet_exhaustion_is_reported_and_leaves_nothing_behind() {
    let mut vpc = vpc();
    // A /28 has 11 usable addresses.
    let req = CreateEni {
        subnet_id: "subnet-tiny".into(),
        secondary_count: 11,
        ..Default::default()
    };
    assert_eq!(
        code(vpc.create_eni(req)),
        "InsufficientFreeAddressesInSubnet"
    );
    assert_eq!(vpc.subnet("subnet-tiny").unwrap().pool.available(), 11);
    let req = CreateEni {
        subnet_id: "subnet-tiny".into(),
        secondary_count: 10,
        ..Default::default()
    };
    vpc.create_eni(req).unwrap();
    assert_eq!(vpc.subnet("subnet-tiny").unwrap().pool.available(), 0);
    let prefixes = CreateEni {
        subnet_id: "subnet-a".into(),
        prefix_count: 20,
        ..Default::default()
    };
    assert_eq!(code(vpc.create_eni(prefixes)), "InsufficientCidrBlocks");
}

#[test]
fn unassign_keeps_the_primary_and_checks_ownership() {
    let mut vpc = vpc();
    let eni = new_eni(&mut vpc, "subnet-a");
    let primary = vpc.eni(&eni).unwrap().primary_ip();
    assert_eq!(
        code(vpc.unassign(&eni, &[primary], &[])),
        "InvalidParameterValue"
    );
    let stranger = "10.0.0.10".parse().unwrap();
    assert_eq!(
        code(vpc.unassign(&eni, &[stranger], &[])),
        "InvalidParameterValue"
    );
    assert_eq!(code(vpc.unassign(&eni, &[], &[])), "MissingParameter");
}

#[test]
fn detach_and_delete_follow_attachment_state() {
    let mut vpc = vpc();
    let eni = new_eni(&mut vpc, "subnet-a");
    let attachment = vpc.attach(&eni, "i-node", 1, 0).unwrap();
    assert_eq!(code(vpc.delete_eni(&eni)), "InvalidNetworkInterface.InUse");
    assert_eq!(
        code(vpc.detach("eni-attach-nope", false)),
        "InvalidAttachmentID.NotFound"
    );
    let primary = vpc
        .primary_eni("i-node")
        .unwrap()
        .attachment
        .clone()
        .unwrap();
    assert_eq!(
        code(vpc.detach(&primary.id, false)),
        "OperationNotPermitted"
    );
    vpc.detach(&attachment, false).unwrap();
    assert_eq!(vpc.eni(&eni).unwrap().status(), "available");
    let before = vpc.subnet("subnet-a").unwrap().pool.available();
    vpc.delete_eni(&eni).unwrap();
    assert_eq!(vpc.subnet("subnet-a").unwrap().pool.available(), before + 1);
    assert_eq!(
        code(vpc.delete_eni(&eni)),
        "InvalidNetworkInterfaceID.NotFound"
    );
}

#[test]
fn trunk_needs_an_instance_type_with_branches() {
    let mut vpc = vpc();
    let req = CreateEni {
        subnet_id: "subnet-a".into(),
        interface_type: InterfaceType::Trunk,
        ..Default::default()
    };
    let trunk = vpc.create_eni(req).unwrap().id.clone();
    assert_eq!(
        code(vpc.attach(&trunk, "i-node", 1, 0)),
        "InvalidParameterValue"
    );
}

#[test]
fn modify_checks_attachment_and_groups() {
    let mut vpc = vpc();
    let eni = new_eni(&mut vpc, "subnet-a");
    let attachment = vpc.attach(&eni, "i-node", 1, 0).unwrap();
    let wrong = EniAttribute::Attachment {
        attachment_id: "eni-attach-nope".into(),
        delete_on_termination: true,
    };
    assert_eq!(
        code(vpc.modify_eni(&eni, wrong)),
        "InvalidAttachmentID.NotFound"
    );
    let right = EniAttribute::Attachment {
        attachment_id: attachment,
        delete_on_termination: true,
    };
    vpc.modify_eni(&eni, right).unwrap();
    assert!(
        vpc.eni(&eni)
            .unwrap()
            .attachment
            .as_ref()
            .unwrap()
            .delete_on_termination
    );
    let groups = EniAttribute::Groups(vec!["sg-9".into()]);
    assert_eq!(code(vpc.modify_eni(&eni, groups)), "InvalidGroup.NotFound");
}

#[test]
fn filters_select_enis() {
    let mut vpc = vpc();
    let eni = new_eni(&mut vpc, "subnet-a");
    vpc.create_tags(
        std::slice::from_ref(&eni),
        &[("node.k8s.amazonaws.com/instance_id".into(), "i-node".into())],
    )
    .unwrap();
    let f = |name: &str, value: &str| super::filter::Filter {
        name: name.into(),
        values: vec![value.into()],
    };
    let hits = vpc
        .describe_enis(
            &[],
            &[
                f("tag-key", "node.k8s.amazonaws.com/instance_id"),
                f("status", "available"),
            ],
        )
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, eni);
    let attached = vpc
        .describe_enis(&[], &[f("attachment.instance-id", "i-node")])
        .unwrap();
    assert_eq!(attached.len(), 1);
    assert_eq!(
        code(vpc.describe_enis(&["eni-nope".into()], &[])),
        "InvalidNetworkInterfaceID.NotFound"
    );
    assert_eq!(
        code(vpc.describe_enis(&[], &[f("bogus", "x")])),
        "InvalidParameterValue"
    );
}

#[test]
fn api_renders_what_the_sdk_reads() {
    let mut vpc = vpc();
    let create = Params::from_pairs([
        ("Action", "CreateNetworkInterface"),
        ("Version", "2016-11-15"),
        ("SubnetId", "subnet-a"),
        ("SecurityGroupId.1", "sg-1"),
        ("SecondaryPrivateIpAddressCount", "2"),
        ("TagSpecification.1.ResourceType", "network-interface"),
        ("TagSpecification.1.Tag.1.Key", "k"),
        ("TagSpecification.1.Tag.1.Value", "v"),
    ]);
    let reply = dispatch(&mut vpc, &create, "req-1").unwrap();
    assert!(reply.changed);
    let xml = reply.xml;
    assert!(xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><CreateNetworkInterfaceResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>req-1</requestId><networkInterface><networkInterfaceId>eni-"#));
    for needle in [
        "<status>available</status>",
        "<groupSet><item><groupId>sg-1</groupId><groupName>nodes</groupName></item></groupSet>",
        "<tagSet><item><key>k</key><value>v</value></item></tagSet>",
        "<primary>true</primary>",
        "<primary>false</primary>",
        "<interfaceType>interface</interfaceType>",
    ] {
        assert!(xml.contains(needle), "{needle} missing in {xml}");
    }

    let bad = Params::from_pairs([("Action", "DescribeSubnets")]);
    assert_eq!(
        dispatch(&mut vpc, &bad, "r").unwrap_err().code,
        "MissingParameter"
    );
    let unknown = Params::from_pairs([("Action", "RunInstances"), ("Version", "2016-11-15")]);
    assert_eq!(
        dispatch(&mut vpc, &unknown, "r").unwrap_err().code,
        "InvalidAction"
    );
}

#[test]
fn secondary_vpc_cidrs_must_be_new_and_well_formed() {
    let mut v = vpc();
    let code = |r: Result<String, super::error::Ec2Error>| r.unwrap_err().code;
    let id = v
        .associate_cidr("vpc-1", "10.1.0.0/16".parse().unwrap())
        .unwrap();
    assert!(id.starts_with("vpc-cidr-assoc-"), "{id}");
    assert_eq!(
        v.cidrs(),
        [
            "10.0.0.0/16".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap()
        ]
    );
    assert_eq!(
        code(v.associate_cidr("vpc-2", "10.2.0.0/16".parse().unwrap())),
        "InvalidVpcID.NotFound"
    );
    for bad in [
        "10.0.128.0/20",
        "10.0.0.0/8",
        "10.2.0.0/12",
        "10.2.0.0/29",
        "10.2.0.1/24",
    ] {
        assert_eq!(
            code(v.associate_cidr("vpc-1", bad.parse().unwrap())),
            "InvalidVpc.Range",
            "{bad}"
        );
    }
    assert_eq!(v.cidrs().len(), 2);
}
