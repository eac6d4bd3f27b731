//! One Query API call: read the parameters, run the action on the VPC, write the XML answer.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::error::Ec2Error;
use super::instance_types::{self, InstanceType};
use super::model::{InterfaceType, Vpc};
use super::ops::{Assign, CreateEni, EniAttribute};
use super::page::{paginate, PageRule, DEFAULT_RULE};
use super::query::{Params, API_VERSION};
use super::render;
use super::trunk::Associate;
use super::xml::Xml;

/// A successful answer and whether the call changed the VPC (so the datapath must follow).
#[derive(Debug)]
pub struct Reply {
    pub xml: String,
    pub changed: bool,
}

pub const ACTIONS: &[&str] = &[
    "DescribeInstanceTypes",
    "DescribeInstances",
    "DescribeNetworkInterfaces",
    "DescribeSubnets",
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "CreateTags",
    "DeleteTags",
    "AssociateTrunkInterface",
    "DescribeTrunkInterfaceAssociations",
    "DisassociateTrunkInterface",
    "AssociateVpcCidrBlock",
];

pub fn dispatch(vpc: &mut Vpc, p: &Params, request_id: &str) -> Result<Reply, Ec2Error> {
    let action = p.action()?;
    check_version(p)?;
    if p.bool("DryRun")? == Some(true) {
        return Err(Ec2Error::new(
            "DryRunOperation",
            "request would have succeeded, but the DryRun flag is set",
        ));
    }
    let mut x = Xml::response(action, request_id);
    let changed = match action {
        "DescribeInstanceTypes" => describe_instance_types(&mut x, p).map(|_| false),
        "DescribeInstances" => describe_instances(&mut x, vpc, p).map(|_| false),
        "DescribeNetworkInterfaces" => describe_network_interfaces(&mut x, vpc, p).map(|_| false),
        "DescribeSubnets" => describe_subnets(&mut x, vpc, p).map(|_| false),
        "CreateNetworkInterface" => create_network_interface(&mut x, vpc, p).map(|_| true),
        "AttachNetworkInterface" => attach_network_interface(&mut x, vpc, p).map(|_| true),
        "DetachNetworkInterface" => detach_network_interface(&mut x, vpc, p).map(|_| true),
        "DeleteNetworkInterface" => delete_network_interface(&mut x, vpc, p).map(|_| true),
        "ModifyNetworkInterfaceAttribute" => modify_attribute(&mut x, vpc, p).map(|_| true),
        "AssignPrivateIpAddresses" => assign_private_ips(&mut x, vpc, p).map(|_| true),
        "UnassignPrivateIpAddresses" => unassign_private_ips(&mut x, vpc, p).map(|_| true),
        "CreateTags" => create_tags(&mut x, vpc, p).map(|_| false),
        "DeleteTags" => delete_tags(&mut x, vpc, p).map(|_| false),
        "AssociateTrunkInterface" => associate_trunk(&mut x, vpc, p).map(|_| true),
        "DescribeTrunkInterfaceAssociations" => {
            describe_trunk_associations(&mut x, vpc, p).map(|_| false)
        }
        "DisassociateTrunkInterface" => disassociate_trunk(&mut x, vpc, p).map(|_| true),
        "AssociateVpcCidrBlock" => associate_vpc_cidr(&mut x, vpc, p).map(|_| false),
        other => Err(Ec2Error::new(
            "InvalidAction",
            format!("the action {other} is not valid for this web service"),
        )),
    }?;
    Ok(Reply {
        xml: x.finish_response(action),
        changed,
    })
}

/// Accepts only the API version the simulator speaks.
fn check_version(p: &Params) -> Result<(), Ec2Error> {
    match p.get("Version") {
        Some(API_VERSION) => Ok(()),
        None => Err(Ec2Error::missing("Version")),
        Some(other) => Err(Ec2Error::invalid_value(format!(
            "API version {other} is not supported; use {API_VERSION}"
        ))),
    }
}

fn describe_instance_types(x: &mut Xml, p: &Params) -> Result<(), Ec2Error> {
    let names = p.list("InstanceType");
    let types: Vec<&InstanceType> = if names.is_empty() {
        instance_types::TABLE.iter().collect()
    } else {
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| instance_types::lookup(n).is_none())
            .collect();
        if !unknown.is_empty() {
            return Err(Ec2Error::new(
                "InvalidInstanceType",
                format!("the following supplied instance types do not exist: {unknown:?}"),
            ));
        }
        names
            .iter()
            .filter_map(|n| instance_types::lookup(n))
            .collect()
    };
    x.set("instanceTypeSet", types, render::instance_type);
    Ok(())
}

fn describe_instances(x: &mut Xml, vpc: &Vpc, p: &Params) -> Result<(), Ec2Error> {
    let ids = p.list("InstanceId");
    let found = vpc.describe_instances(&ids, &p.filters()?)?;
    let page = paginate(
        found,
        |i| i.id.as_str(),
        p.parsed("MaxResults")?,
        p.get("NextToken"),
        DEFAULT_RULE,
        !ids.is_empty(),
    )?;
    x.set("reservationSet", page.items, |x, i| {
        render::reservation(x, vpc, i)
    });
    x.leaf_opt("nextToken", page.next_token);
    Ok(())
}

fn describe_network_interfaces(x: &mut Xml, vpc: &Vpc, p: &Params) -> Result<(), Ec2Error> {
    let ids = p.list("NetworkInterfaceId");
    let found = vpc.describe_enis(&ids, &p.filters()?)?;
    let page = paginate(
        found,
        |e| e.id.as_str(),
        p.parsed("MaxResults")?,
        p.get("NextToken"),
        DEFAULT_RULE,
        !ids.is_empty(),
    )?;
    x.set("networkInterfaceSet", page.items, |x, eni| {
        render::network_interface(x, vpc, eni)
    });
    x.leaf_opt("nextToken", page.next_token);
    Ok(())
}

fn describe_subnets(x: &mut Xml, vpc: &Vpc, p: &Params) -> Result<(), Ec2Error> {
    let ids = p.list("SubnetId");
    let found = vpc.describe_subnets(&ids, &p.filters()?)?;
    let rule = PageRule {
        exclusive_with_ids: false,
        ..DEFAULT_RULE
    };
    let max = p.parsed("MaxResults")?;
    let page = paginate(
        found,
        |s| s.id.as_str(),
        max,
        p.get("NextToken"),
        rule,
        !ids.is_empty(),
    )?;
    x.set("subnetSet", page.items, |x, s| render::subnet(x, vpc, s));
    x.leaf_opt("nextToken", page.next_token);
    Ok(())
}

fn associate_vpc_cidr(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    let vpc_id = p.required("VpcId")?;
    let raw = p.required("CidrBlock")?;
    let cidr = raw
        .parse()
        .map_err(|_| Ec2Error::new("InvalidVpc.Range", format!("The CIDR '{raw}' is invalid.")))?;
    let id = vpc.associate_cidr(vpc_id, cidr)?;
    x.leaf("vpcId", vpc_id);
    x.nest("cidrBlockAssociation", |x| {
        x.leaf("associationId", &id).leaf("cidrBlock", cidr);
        x.nest("cidrBlockState", |x| {
            x.leaf("state", "associated");
        });
    });
    Ok(())
}

fn create_network_interface(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    if !p.indices("PrivateIpAddresses").is_empty() {
        return Err(Ec2Error::invalid_value(
            "PrivateIpAddresses is not supported here",
        ));
    }
    let interface_type = match p.get("InterfaceType") {
        Some(raw) => InterfaceType::parse(raw)?,
        None => InterfaceType::Interface,
    };
    let req = CreateEni {
        subnet_id: p.required("SubnetId")?.to_string(),
        description: p.get("Description").unwrap_or_default().to_string(),
        groups: p.list("SecurityGroupId"),
        primary_ip: p.parsed("PrivateIpAddress")?,
        secondary_count: p.parsed("SecondaryPrivateIpAddressCount")?.unwrap_or(0),
        prefix_count: p.parsed("Ipv4PrefixCount")?.unwrap_or(0),
        interface_type,
        tags: p.tag_specifications("network-interface")?,
    };
    let eni = vpc.create_eni(req)?.id.clone();
    let eni = vpc.eni(&eni)?;
    x.nest("networkInterface", |x| {
        render::network_interface(x, vpc, eni)
    });
    x.leaf_opt("clientToken", p.get("ClientToken"));
    Ok(())
}

fn attach_network_interface(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    let eni = p.required("NetworkInterfaceId")?;
    let instance = p.required("InstanceId")?;
    let device_index: u32 = p
        .parsed("DeviceIndex")?
        .ok_or_else(|| Ec2Error::missing("DeviceIndex"))?;
    let card: u32 = p.parsed("NetworkCardIndex")?.unwrap_or(0);
    let attachment = vpc.attach(eni, instance, device_index, card)?;
    x.leaf("attachmentId", attachment)
        .leaf("networkCardIndex", card);
    Ok(())
}

fn detach_network_interface(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    let force = p.bool("Force")?.unwrap_or(false);
    vpc.detach(p.required("AttachmentId")?, force)?;
    x.leaf("return", true);
    Ok(())
}

fn delete_network_interface(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    vpc.delete_eni(p.required("NetworkInterfaceId")?)?;
    x.leaf("return", true);
    Ok(())
}

fn modify_attribute(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    let eni = p.required("NetworkInterfaceId")?;
    let mut attributes = Vec::new();
    if let Some(id) = p.get("Attachment.AttachmentId") {
        let delete_on_termination = p
            .bool("Attachment.DeleteOnTermination")?
            .ok_or_else(|| Ec2Error::missing("Attachment.DeleteOnTermination"))?;
        attributes.push(EniAttribute::Attachment {
            attachment_id: id.to_string(),
            delete_on_termination,
        });
    }
    let groups = p.list("SecurityGroupId");
    if !groups.is_empty() {
        attributes.push(EniAttribute::Groups(groups));
    }
    if let Some(text) = p.get("Description.Value") {
        attributes.push(EniAttribute::Description(text.to_string()));
    }
    if let Some(on) = p.bool("SourceDestCheck.Value")? {
        attributes.push(EniAttribute::SourceDestCheck(on));
    }
    if attributes.len() > 1 {
        return Err(Ec2Error::combination(
            "only one attribute can be modified at a time",
        ));
    }
    let attribute = attributes
        .pop()
        .ok_or_else(|| Ec2Error::missing("an attribute to modify"))?;
    vpc.modify_eni(eni, attribute)?;
    x.leaf("return", true);
    Ok(())
}

fn prefix_list(p: &Params) -> Result<Vec<Ipv4Net>, Ec2Error> {
    p.list("Ipv4Prefix")
        .iter()
        .map(|raw| {
            raw.parse()
                .map_err(|_| Ec2Error::invalid_value(format!("'{raw}' is not an IPv4 prefix")))
        })
        .collect()
}

fn assign_private_ips(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    let eni = p.required("NetworkInterfaceId")?;
    let req = Assign {
        count: p.parsed("SecondaryPrivateIpAddressCount")?,
        ips: p.ip_list("PrivateIpAddress")?,
        prefix_count: p.parsed("Ipv4PrefixCount")?,
        prefixes: prefix_list(p)?,
    };
    let (ips, prefixes) = vpc.assign(eni, req)?;
    x.leaf("networkInterfaceId", eni);
    x.set("assignedPrivateIpAddressesSet", &ips, |x, ip: &Ipv4Addr| {
        x.leaf("privateIpAddress", ip);
    });
    x.set("assignedIpv4PrefixSet", &prefixes, |x, prefix| {
        x.leaf("ipv4Prefix", prefix);
    });
    Ok(())
}

fn unassign_private_ips(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    let eni = p.required("NetworkInterfaceId")?;
    vpc.unassign(eni, &p.ip_list("PrivateIpAddress")?, &prefix_list(p)?)?;
    x.leaf("return", true);
    Ok(())
}

fn create_tags(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    let tags: Vec<(String, String)> = p
        .tags("Tag")?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect();
    if tags.is_empty() {
        return Err(Ec2Error::missing("Tag"));
    }
    vpc.create_tags(&p.list("ResourceId"), &tags)?;
    x.leaf("return", true);
    Ok(())
}

fn delete_tags(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    vpc.delete_tags(&p.list("ResourceId"), &p.tags("Tag")?)?;
    x.leaf("return", true);
    Ok(())
}

fn associate_trunk(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    let req = Associate {
        branch: p.required("BranchInterfaceId")?.to_string(),
        trunk: p.required("TrunkInterfaceId")?.to_string(),
        vlan_id: p.parsed("VlanId")?,
        gre_key: p.parsed("GreKey")?,
        client_token: p.get("ClientToken").map(str::to_string),
    };
    let association = vpc.associate_trunk(&req)?;
    x.nest("interfaceAssociation", |x| {
        render::trunk_association(x, &association)
    });
    x.leaf_opt("clientToken", req.client_token);
    Ok(())
}

fn describe_trunk_associations(x: &mut Xml, vpc: &Vpc, p: &Params) -> Result<(), Ec2Error> {
    let ids = p.list("AssociationId");
    let found = vpc.describe_trunk_associations(&ids, &p.filters()?)?;
    let rule = PageRule {
        max: 255,
        exclusive_with_ids: false,
        ..DEFAULT_RULE
    };
    let page = paginate(
        found,
        |a| a.id.as_str(),
        p.parsed("MaxResults")?,
        p.get("NextToken"),
        rule,
        !ids.is_empty(),
    )?;
    x.set("interfaceAssociationSet", page.items, |x, a| {
        render::trunk_association(x, a)
    });
    x.leaf_opt("nextToken", page.next_token);
    Ok(())
}

fn disassociate_trunk(x: &mut Xml, vpc: &mut Vpc, p: &Params) -> Result<(), Ec2Error> {
    let token = p.get("ClientToken");
    vpc.disassociate_trunk(p.required("AssociationId")?, token)?;
    x.leaf("return", true);
    x.leaf_opt("clientToken", token);
    Ok(())
}
