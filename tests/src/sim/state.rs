//! `GET /sim/state`: the whole VPC as JSON, for tests that look behind the EC2 API.

use serde_json::{json, Value};

use super::ec2::model::{timestamp, Eni, TrunkAssociation, Vpc};
use super::fabric::vlan_link_name;

/// `vlan_datapath` says whether branches carry traffic; each association then names the
/// fabric's 802.1Q link of its branch (while its trunk is attached).
pub fn to_json(vpc: &Vpc, vlan_datapath: bool) -> Value {
    let subnets: Vec<Value> = vpc
        .subnets
        .values()
        .map(|s| {
            json!({
                "id": s.id,
                "cidr": s.pool.cidr().to_string(),
                "az": s.az,
                "availableIpAddressCount": s.pool.available(),
                "tags": s.tags,
            })
        })
        .collect();
    let instances: Vec<Value> = vpc
        .instances
        .values()
        .map(|i| {
            json!({
                "id": i.id,
                "type": i.itype.name,
                "role": i.role,
                "subnetId": i.subnet_id,
                "availabilityZone": i.az,
                "enis": vpc.instance_enis(&i.id).iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "region": vpc.region,
        "vpcId": vpc.id,
        "cidr": vpc.cidr.to_string(),
        "subnets": subnets,
        "instances": instances,
        "enis": vpc.enis.values().map(eni_json).collect::<Vec<_>>(),
        "trunkAssociations": vpc
            .trunk_associations
            .values()
            .map(|a| association_json(vpc, a, vlan_datapath))
            .collect::<Vec<_>>(),
        "vlanDatapath": vlan_datapath,
    })
}

fn association_json(vpc: &Vpc, a: &TrunkAssociation, vlan_datapath: bool) -> Value {
    let carried = vlan_datapath
        && vpc
            .enis
            .get(&a.trunk_eni)
            .is_some_and(|t| t.attachment.is_some());
    json!({
        "id": a.id,
        "trunkInterfaceId": a.trunk_eni,
        "branchInterfaceId": a.branch_eni,
        "vlanId": a.vlan_id,
        "fabricLink": carried.then(|| vlan_link_name(&a.branch_eni)),
    })
}

fn eni_json(eni: &Eni) -> Value {
    let attachment = eni.attachment.as_ref().map(|a| {
        json!({
            "id": a.id,
            "instanceId": a.instance_id,
            "deviceIndex": a.device_index,
            "networkCardIndex": a.network_card_index,
            "deleteOnTermination": a.delete_on_termination,
            "attachTime": timestamp(&a.attach_time),
        })
    });
    json!({
        "id": eni.id,
        "subnetId": eni.subnet_id,
        "mac": eni.mac,
        "status": eni.status(),
        "interfaceType": eni.interface_type.as_str(),
        "description": eni.description,
        "groups": eni.groups,
        "primaryIp": eni.primary_ip().to_string(),
        "privateIps": eni.private_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "prefixes": eni.prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "sourceDestCheck": eni.source_dest_check,
        "tags": eni.tags,
        "attachment": attachment,
        "trunkAssociationId": eni.association,
    })
}
