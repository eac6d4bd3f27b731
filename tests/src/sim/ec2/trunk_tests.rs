//! Rules of trunk associations: who may be a trunk or a branch, VLAN ids, limits, tokens, and
//! what a branch looks like while it rides on a trunk.

use super::api::dispatch;
use super::filter::Filter;
use super::model::{InterfaceType, Vpc};
use super::ops::CreateEni;
use super::query::Params;
use super::trunk::Associate;
use crate::sim::scenario::Scenario;

fn vpc() -> Vpc {
    let scenario: Scenario = serde_json::from_value(serde_json::json!({
        "region": "us-west-2",
        "seed": 7,
        "vpc": {"id": "vpc-1", "cidr": "10.0.0.0/16"},
        "subnets": [
            {"id": "subnet-node", "cidr": "10.0.0.0/24", "az": "us-west-2a"},
            {"id": "subnet-pods", "cidr": "10.0.32.0/19", "az": "us-west-2a"},
            {"id": "subnet-b", "cidr": "10.0.1.0/24", "az": "us-west-2b"}
        ],
        "securityGroups": [{"id": "sg-node", "name": "node"}],
        "instances": [
            {"id": "i-m5", "type": "m5.large", "subnet": "subnet-node", "role": "node"},
            {"id": "i-t3", "type": "t3.medium", "subnet": "subnet-node", "role": "node"}
        ]
    }))
    .unwrap();
    Vpc::from_scenario(&scenario).unwrap()
}

fn eni(vpc: &mut Vpc, subnet: &str, interface_type: InterfaceType) -> String {
    let req = CreateEni {
        subnet_id: subnet.into(),
        interface_type,
        ..Default::default()
    };
    vpc.create_eni(req).unwrap().id.clone()
}

/// A trunk attached to the m5.large at device index 2.
fn trunk(vpc: &mut Vpc) -> String {
    let trunk = eni(vpc, "subnet-node", InterfaceType::Trunk);
    vpc.attach(&trunk, "i-m5", 2, 0).unwrap();
    trunk
}

fn branch(vpc: &mut Vpc) -> String {
    eni(vpc, "subnet-pods", InterfaceType::Interface)
}

fn req(branch: &str, trunk: &str, vlan: i64) -> Associate {
    Associate {
        branch: branch.into(),
        trunk: trunk.into(),
        vlan_id: Some(vlan),
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, super::Ec2Error>) -> String {
    r.unwrap_err().code
}

#[test]
fn a_branch_rides_on_its_vlan_until_disassociated() {
    let mut vpc = vpc();
    let trunk = trunk(&mut vpc);
    let branch = branch(&mut vpc);
    assert_eq!(vpc.eni(&branch).unwrap().status(), "available");

    let association = vpc.associate_trunk(&req(&branch, &trunk, 5)).unwrap();
    assert!(association.id.starts_with("trunk-assoc-"));
    assert_eq!(association.id.len(), "trunk-assoc-".len() + 17);
    assert_eq!(association.vlan_id, 5);
    let riding = vpc.eni(&branch).unwrap();
    assert_eq!(riding.interface_type, InterfaceType::Branch);
    assert_eq!(riding.status(), "in-use");
    assert!(riding.attachment.is_none());

    vpc.disassociate_trunk(&association.id, None).unwrap();
    let free = vpc.eni(&branch).unwrap();
    assert_eq!(free.interface_type, InterfaceType::Interface);
    assert_eq!(free.status(), "available");
    assert_eq!(
        code(vpc.disassociate_trunk(&association.id, None)),
        "InvalidAssociationID.NotFound"
    );
}

#[test]
fn vlan_ids_are_unique_per_trunk_and_in_range() {
    let mut vpc = vpc();
    let trunk = trunk(&mut vpc);
    let (first, second) = (branch(&mut vpc), branch(&mut vpc));
    vpc.associate_trunk(&req(&first, &trunk, 5)).unwrap();
    let duplicate = vpc.associate_trunk(&req(&second, &trunk, 5)).unwrap_err();
    assert_eq!(duplicate.code, "InvalidVlanId.Duplicate");
    assert_eq!(duplicate.message, "VlanId '5' is in use");
    for bad in [0, 4095, -1] {
        assert_eq!(
            code(vpc.associate_trunk(&req(&second, &trunk, bad))),
            "InvalidParameterValue",
            "vlan {bad}"
        );
    }
    vpc.associate_trunk(&req(&second, &trunk, 4094)).unwrap();

    let no_vlan = Associate {
        vlan_id: None,
        ..req(&second, &trunk, 1)
    };
    assert_eq!(code(vpc.associate_trunk(&no_vlan)), "MissingParameter");
    let gre = Associate {
        gre_key: Some(3),
        ..req(&second, &trunk, 1)
    };
    assert_eq!(
        code(vpc.associate_trunk(&gre)),
        "InvalidParameterCombination"
    );
}

#[test]
fn the_instance_type_limits_branches_per_trunk() {
    let mut vpc = vpc();
    let trunk = trunk(&mut vpc);
    for vlan in 1..=9 {
        let b = branch(&mut vpc);
        vpc.associate_trunk(&req(&b, &trunk, vlan)).unwrap();
    }
    let tenth = branch(&mut vpc);
    let err = vpc.associate_trunk(&req(&tenth, &trunk, 10)).unwrap_err();
    assert_eq!(err.code, "BranchInterfaceLimitExceeded");
    assert!(err.message.contains("m5.large carries at most 9"), "{err}");

    // Freeing one slot makes room again.
    let first = vpc.branches_of(&trunk)[0].id.clone();
    vpc.disassociate_trunk(&first, None).unwrap();
    vpc.associate_trunk(&req(&tenth, &trunk, 10)).unwrap();
}

#[test]
fn t_family_instances_carry_no_branches() {
    let mut vpc = vpc();
    let trunk = eni(&mut vpc, "subnet-node", InterfaceType::Trunk);
    assert_eq!(
        code(vpc.attach(&trunk, "i-t3", 1, 0)),
        "InvalidParameterValue"
    );
    // Even an ENI that reports itself a trunk on a t3 has no branch slots.
    let plain = eni(&mut vpc, "subnet-node", InterfaceType::Interface);
    vpc.attach(&plain, "i-t3", 1, 0).unwrap();
    vpc.eni_mut(&plain).unwrap().interface_type = InterfaceType::Trunk;
    let b = branch(&mut vpc);
    let err = vpc.associate_trunk(&req(&b, &plain, 1)).unwrap_err();
    assert_eq!(err.code, "BranchInterfaceLimitExceeded");
    assert!(err.message.contains("at most 0"), "{err}");
}

#[test]
fn only_attached_trunks_carry_only_free_branches() {
    let mut vpc = vpc();
    let loose_trunk = eni(&mut vpc, "subnet-node", InterfaceType::Trunk);
    let b = branch(&mut vpc);
    assert_eq!(
        code(vpc.associate_trunk(&req(&b, &loose_trunk, 1))),
        "IncorrectState"
    );
    let trunk = trunk(&mut vpc);
    let not_trunk = branch(&mut vpc);
    assert_eq!(
        code(vpc.associate_trunk(&req(&b, &not_trunk, 1))),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(vpc.associate_trunk(&req("eni-nope", &trunk, 1))),
        "InvalidNetworkInterfaceID.NotFound"
    );

    let attached = eni(&mut vpc, "subnet-node", InterfaceType::Interface);
    let attachment = vpc.attach(&attached, "i-m5", 1, 0).unwrap();
    assert_eq!(
        code(vpc.associate_trunk(&req(&attached, &trunk, 1))),
        "InvalidNetworkInterface.InUse"
    );
    vpc.associate_trunk(&req(&b, &trunk, 1)).unwrap();
    assert_eq!(
        code(vpc.associate_trunk(&req(&b, &trunk, 2))),
        "InvalidNetworkInterface.InUse"
    );
    // A branch cannot be attached to an instance while it rides on a trunk.
    assert_eq!(code(vpc.attach(&b, "i-t3", 1, 0)), "InvalidParameterValue");

    let far = eni(&mut vpc, "subnet-b", InterfaceType::Interface);
    assert_eq!(
        code(vpc.associate_trunk(&req(&far, &trunk, 3))),
        "InvalidParameterValue"
    );
    // One trunk per instance.
    vpc.detach(&attachment, false).unwrap();
    let second_trunk = eni(&mut vpc, "subnet-node", InterfaceType::Trunk);
    assert_eq!(
        code(vpc.attach(&second_trunk, "i-m5", 1, 0)),
        "InvalidParameterValue"
    );
}

#[test]
fn client_tokens_replay_the_first_answer() {
    let mut vpc = vpc();
    let trunk = trunk(&mut vpc);
    let b = branch(&mut vpc);
    let with_token = Associate {
        client_token: Some("tok-1".into()),
        ..req(&b, &trunk, 7)
    };
    let first = vpc.associate_trunk(&with_token).unwrap();
    let again = vpc.associate_trunk(&with_token).unwrap();
    assert_eq!(first, again);
    assert_eq!(vpc.trunk_associations.len(), 1);
    let other = Associate {
        vlan_id: Some(8),
        ..with_token.clone()
    };
    assert_eq!(
        code(vpc.associate_trunk(&other)),
        "IdempotentParameterMismatch"
    );

    vpc.disassociate_trunk(&first.id, Some("tok-2")).unwrap();
    vpc.disassociate_trunk(&first.id, Some("tok-2")).unwrap();
    assert_eq!(
        code(vpc.disassociate_trunk(&first.id, Some("tok-1"))),
        "IdempotentParameterMismatch"
    );
}

#[test]
fn deleting_a_branch_or_detaching_its_trunk_ends_the_association() {
    let mut vpc = vpc();
    let trunk = trunk(&mut vpc);
    let (b1, b2) = (branch(&mut vpc), branch(&mut vpc));
    vpc.associate_trunk(&req(&b1, &trunk, 1)).unwrap();
    vpc.associate_trunk(&req(&b2, &trunk, 2)).unwrap();

    vpc.delete_eni(&b1).unwrap();
    assert_eq!(vpc.branches_of(&trunk).len(), 1);

    let attachment = vpc.eni(&trunk).unwrap().attachment.clone().unwrap().id;
    vpc.detach(&attachment, false).unwrap();
    assert!(vpc.trunk_associations.is_empty());
    assert_eq!(vpc.eni(&b2).unwrap().status(), "available");
    assert_eq!(
        vpc.eni(&b2).unwrap().interface_type,
        InterfaceType::Interface
    );
}

#[test]
fn describe_filters_by_trunk_and_branch() {
    let mut vpc = vpc();
    let trunk = trunk(&mut vpc);
    let (b1, b2) = (branch(&mut vpc), branch(&mut vpc));
    let a1 = vpc.associate_trunk(&req(&b1, &trunk, 1)).unwrap();
    vpc.associate_trunk(&req(&b2, &trunk, 2)).unwrap();
    let f = |name: &str, value: &str| Filter {
        name: name.into(),
        values: vec![value.into()],
    };
    let by_trunk = [f("trunk-interface-association.trunk-interface-id", &trunk)];
    assert_eq!(
        vpc.describe_trunk_associations(&[], &by_trunk)
            .unwrap()
            .len(),
        2
    );
    let by_branch = [f("trunk-interface-association.branch-interface-id", &b1)];
    let hits = vpc.describe_trunk_associations(&[], &by_branch).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, a1.id);
    assert_eq!(
        code(vpc.describe_trunk_associations(&["trunk-assoc-nope".into()], &[])),
        "InvalidAssociationID.NotFound"
    );
}

#[test]
fn api_answers_in_the_shapes_the_sdk_reads() {
    let mut vpc = vpc();
    let trunk = trunk(&mut vpc);
    let b = branch(&mut vpc);
    let call = |vpc: &mut Vpc, pairs: &[(&str, &str)]| {
        let mut all = vec![("Version", "2016-11-15")];
        all.extend_from_slice(pairs);
        dispatch(vpc, &Params::from_pairs(all), "r").map(|r| r.xml)
    };
    let xml = call(
        &mut vpc,
        &[
            ("Action", "AssociateTrunkInterface"),
            ("BranchInterfaceId", &b),
            ("TrunkInterfaceId", &trunk),
            ("VlanId", "5"),
            ("ClientToken", "t"),
        ],
    )
    .unwrap();
    let expected = format!(
        "<branchInterfaceId>{b}</branchInterfaceId><trunkInterfaceId>{trunk}</trunkInterfaceId>\
         <interfaceProtocol>VLAN</interfaceProtocol><vlanId>5</vlanId></interfaceAssociation>\
         <clientToken>t</clientToken>"
    );
    assert!(
        xml.contains("<interfaceAssociation><associationId>trunk-assoc-"),
        "{xml}"
    );
    assert!(xml.contains(&expected), "{xml}");

    let described = call(
        &mut vpc,
        &[
            ("Action", "DescribeNetworkInterfaces"),
            ("NetworkInterfaceId.1", &b),
        ],
    )
    .unwrap();
    assert!(described.contains("<interfaceType>branch</interfaceType>"));
    assert!(described.contains("<status>in-use</status>"));

    let listed = call(
        &mut vpc,
        &[
            ("Action", "DescribeTrunkInterfaceAssociations"),
            ("MaxResults", "5"),
        ],
    )
    .unwrap();
    assert!(listed.contains("<interfaceAssociationSet><item><associationId>"));
    let too_many = [
        ("Action", "DescribeTrunkInterfaceAssociations"),
        ("MaxResults", "256"),
    ];
    assert_eq!(
        call(&mut vpc, &too_many).unwrap_err().code,
        "InvalidParameterValue"
    );
}

#[test]
fn instance_types_expose_no_branch_limit() {
    let mut vpc = vpc();
    let params = Params::from_pairs([
        ("Action", "DescribeInstanceTypes"),
        ("Version", "2016-11-15"),
        ("InstanceType.1", "m5.large"),
    ]);
    let xml = dispatch(&mut vpc, &params, "r").unwrap().xml;
    assert!(xml.contains("<maximumNetworkInterfaces>3</maximumNetworkInterfaces>"));
    assert!(!xml.to_lowercase().contains("branch"), "{xml}");
    assert!(!xml.to_lowercase().contains("trunk"), "{xml}");
}
