//! The XML shapes of EC2 resources, element names as the EC2 Query API (and so aws-sdk-ec2's
//! deserializers) expect them.

use std::net::Ipv4Addr;

use super::instance_types::InstanceType;
use super::model::{timestamp, Eni, Instance, Subnet, Tags, TrunkAssociation, Vpc, OWNER_ID};
use super::xml::Xml;

/// `ip-10-0-0-10.us-west-2.compute.internal`, the private DNS name EC2 derives from an address.
pub fn private_dns_name(ip: Ipv4Addr, region: &str) -> String {
    let dashed = ip.to_string().replace('.', "-");
    if region == "us-east-1" {
        format!("ip-{dashed}.ec2.internal")
    } else {
        format!("ip-{dashed}.{region}.compute.internal")
    }
}

pub fn tag_set(x: &mut Xml, tags: &Tags) {
    x.set("tagSet", tags, |x, (k, v)| {
        x.leaf("key", k).leaf("value", v);
    });
}

fn group_set(x: &mut Xml, vpc: &Vpc, groups: &[String]) {
    x.set("groupSet", groups, |x, id| {
        x.leaf("groupId", id).leaf("groupName", vpc.group_name(id));
    });
}

/// A NetworkInterface as DescribeNetworkInterfaces and CreateNetworkInterface return it.
pub fn network_interface(x: &mut Xml, vpc: &Vpc, eni: &Eni) {
    let dns = |ip: Ipv4Addr| private_dns_name(ip, &vpc.region);
    x.leaf("networkInterfaceId", &eni.id)
        .leaf("subnetId", &eni.subnet_id)
        .leaf("vpcId", &eni.vpc_id)
        .leaf("availabilityZone", &eni.az)
        .leaf("description", &eni.description)
        .leaf("ownerId", OWNER_ID)
        .leaf("requesterManaged", eni.requester_managed)
        .leaf("status", eni.status())
        .leaf("macAddress", &eni.mac)
        .leaf("privateIpAddress", eni.primary_ip())
        .leaf("privateDnsName", dns(eni.primary_ip()))
        .leaf("sourceDestCheck", eni.source_dest_check);
    group_set(x, vpc, &eni.groups);
    if let Some(a) = &eni.attachment {
        x.nest("attachment", |x| {
            x.leaf("attachmentId", &a.id)
                .leaf("instanceId", &a.instance_id)
                .leaf("instanceOwnerId", OWNER_ID)
                .leaf("deviceIndex", a.device_index)
                .leaf("networkCardIndex", a.network_card_index)
                .leaf("status", "attached")
                .leaf("attachTime", timestamp(&a.attach_time))
                .leaf("deleteOnTermination", a.delete_on_termination);
        });
    }
    tag_set(x, &eni.tags);
    x.set(
        "privateIpAddressesSet",
        eni.private_ips.iter().enumerate(),
        |x, (n, ip)| {
            x.leaf("privateIpAddress", ip)
                .leaf("privateDnsName", dns(*ip))
                .leaf("primary", n == 0);
        },
    );
    if !eni.prefixes.is_empty() {
        x.set("ipv4PrefixSet", &eni.prefixes, |x, p| {
            x.leaf("ipv4Prefix", p);
        });
    }
    x.open("ipv6AddressesSet").close("ipv6AddressesSet");
    x.leaf("interfaceType", eni.interface_type.as_str());
}

/// The shorter InstanceNetworkInterface shape inside DescribeInstances.
fn instance_network_interface(x: &mut Xml, vpc: &Vpc, eni: &Eni) {
    x.leaf("networkInterfaceId", &eni.id)
        .leaf("subnetId", &eni.subnet_id)
        .leaf("vpcId", &eni.vpc_id)
        .leaf("description", &eni.description)
        .leaf("ownerId", OWNER_ID)
        .leaf("status", eni.status())
        .leaf("macAddress", &eni.mac)
        .leaf("privateIpAddress", eni.primary_ip())
        .leaf(
            "privateDnsName",
            private_dns_name(eni.primary_ip(), &vpc.region),
        )
        .leaf("sourceDestCheck", eni.source_dest_check);
    group_set(x, vpc, &eni.groups);
    if let Some(a) = &eni.attachment {
        x.nest("attachment", |x| {
            x.leaf("attachmentId", &a.id)
                .leaf("deviceIndex", a.device_index)
                .leaf("networkCardIndex", a.network_card_index)
                .leaf("status", "attached")
                .leaf("attachTime", timestamp(&a.attach_time))
                .leaf("deleteOnTermination", a.delete_on_termination);
        });
    }
    x.set(
        "privateIpAddressesSet",
        eni.private_ips.iter().enumerate(),
        |x, (n, ip)| {
            x.leaf("privateIpAddress", ip)
                .leaf("privateDnsName", private_dns_name(*ip, &vpc.region))
                .leaf("primary", n == 0);
        },
    );
    if !eni.prefixes.is_empty() {
        x.set("ipv4PrefixSet", &eni.prefixes, |x, p| {
            x.leaf("ipv4Prefix", p);
        });
    }
    x.leaf("interfaceType", eni.interface_type.as_str());
}

pub fn subnet(x: &mut Xml, vpc: &Vpc, s: &Subnet) {
    x.leaf("subnetId", &s.id)
        .leaf(
            "subnetArn",
            format!("arn:aws:ec2:{}:{OWNER_ID}:subnet/{}", vpc.region, s.id),
        )
        .leaf("state", "available")
        .leaf("ownerId", OWNER_ID)
        .leaf("vpcId", &vpc.id)
        .leaf("cidrBlock", s.pool.cidr())
        .leaf("availableIpAddressCount", s.pool.available())
        .leaf("availabilityZone", &s.az)
        .leaf("defaultForAz", false)
        .leaf("mapPublicIpOnLaunch", false)
        .leaf("assignIpv6AddressOnCreation", false);
    tag_set(x, &s.tags);
}

/// One reservation holding one instance, as DescribeInstances lists it.
pub fn reservation(x: &mut Xml, vpc: &Vpc, i: &Instance) {
    let enis = vpc.instance_enis(&i.id);
    let primary_ip = enis.first().map(|e| e.primary_ip());
    x.leaf(
        "reservationId",
        format!("r-{}", &i.id.trim_start_matches("i-")),
    )
    .leaf("ownerId", OWNER_ID);
    x.set("instancesSet", [i], |x, i| {
        x.leaf("instanceId", &i.id)
            .leaf("imageId", "ami-0123456789abcdef0")
            .nest("instanceState", |x| {
                x.leaf("code", 16).leaf("name", "running");
            })
            .leaf_opt(
                "privateDnsName",
                primary_ip.map(|ip| private_dns_name(ip, &vpc.region)),
            )
            .leaf("instanceType", i.itype.name)
            .leaf("launchTime", timestamp(&i.launch_time))
            .nest("placement", |x| {
                x.leaf("availabilityZone", &i.az).leaf("tenancy", "default");
            })
            .leaf("subnetId", &i.subnet_id)
            .leaf("vpcId", &vpc.id)
            .leaf_opt("privateIpAddress", primary_ip)
            .leaf(
                "sourceDestCheck",
                enis.first().is_none_or(|e| e.source_dest_check),
            )
            .leaf("architecture", "x86_64")
            .leaf("hypervisor", "xen")
            .leaf("virtualizationType", "hvm");
        group_set(x, vpc, &i.groups);
        tag_set(x, &i.tags);
        x.set("networkInterfaceSet", &enis, |x, eni| {
            instance_network_interface(x, vpc, eni)
        });
    });
}

pub fn instance_type(x: &mut Xml, t: &InstanceType) {
    x.leaf("instanceType", t.name)
        .leaf("currentGeneration", true)
        .leaf("freeTierEligible", false)
        .value_set("supportedUsageClasses", ["on-demand", "spot"])
        .value_set("supportedRootDeviceTypes", ["ebs"])
        .value_set("supportedVirtualizationTypes", ["hvm"])
        .leaf("bareMetal", false)
        .leaf("hypervisor", "nitro")
        .nest("processorInfo", |x| {
            x.value_set("supportedArchitectures", ["x86_64"]);
        })
        .nest("vCpuInfo", |x| {
            x.leaf("defaultVCpus", t.vcpus);
        })
        .nest("memoryInfo", |x| {
            x.leaf("sizeInMiB", t.memory_mib);
        })
        .nest("networkInfo", |x| network_info(x, t));
}

fn network_info(x: &mut Xml, t: &InstanceType) {
    x.leaf("networkPerformance", t.network_performance)
        .leaf("maximumNetworkInterfaces", t.max_enis)
        .leaf("maximumNetworkCards", 1)
        .leaf("defaultNetworkCardIndex", 0)
        .set("networkCards", [t], |x, t| {
            x.leaf("networkCardIndex", 0)
                .leaf("networkPerformance", t.network_performance)
                .leaf("maximumNetworkInterfaces", t.max_enis);
        })
        .leaf("ipv4AddressesPerInterface", t.ipv4_per_eni)
        .leaf("ipv6AddressesPerInterface", t.ipv6_per_eni)
        .leaf("ipv6Supported", true)
        .leaf("enaSupport", "required")
        .leaf("efaSupported", false)
        .leaf("encryptionInTransitSupported", false);
}

/// A TrunkInterfaceAssociation; every association here uses the VLAN protocol.
pub fn trunk_association(x: &mut Xml, a: &TrunkAssociation) {
    x.leaf("associationId", &a.id)
        .leaf("branchInterfaceId", &a.branch_eni)
        .leaf("trunkInterfaceId", &a.trunk_eni)
        .leaf("interfaceProtocol", "VLAN")
        .leaf("vlanId", a.vlan_id);
}
