//! The trunk ENI: found among the attached ENIs, or created and attached at the highest free
//! device index, then set up on the node like a secondary ENI without its source rule. Its
//! own address is never handed to a pod; it only carries the branches' VLANs.

use std::collections::BTreeMap;
use std::time::SystemTime;

use ipnet::Ipv4Net;
use thiserror::Error;

use super::restore::BRANCH_DESCRIPTION;
use crate::datastore::EniInfo;
use crate::ec2::{self, AddressRequest, Ec2, Ec2Error, EniDescription, NewEni};
use crate::host::{Host, HostError};
use crate::node::Node;

/// EC2's interface type of a trunk ENI.
pub const TRUNK_INTERFACE_TYPE: &str = "trunk";
/// Description of the trunk ENI, as the VPC Resource Controller names its own.
pub const TRUNK_DESCRIPTION: &str = "aws-k8s-trunk-eni";
/// Tags the VPC Resource Controller puts on a branch ENI; kept so its tools and clean-up
/// find ipamd's branches too.
pub const TAG_VLAN_ID: &str = "vpcresources.k8s.aws/vlan-id";
pub const TAG_TRUNK_ENI_ID: &str = "vpcresources.k8s.aws/trunk-eni-id";
pub const BRANCH_OWNER: &str = "eks-vpc-resource-controller";

#[derive(Debug, Error)]
pub enum TrunkError {
    #[error("trunk eni: {0}")]
    Ec2(#[from] Ec2Error),
    #[error("trunk eni: {0}")]
    Host(#[from] HostError),
    #[error("trunk eni: no free eni slot ({attached} of {max} attached)")]
    NoSlot { attached: u32, max: u32 },
}

/// The trunk ENI attached to this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    pub eni_id: String,
    pub mac: String,
    pub device_index: u32,
}

impl Trunk {
    pub fn from_description(eni: &EniDescription) -> Self {
        Trunk {
            eni_id: eni.id.clone(),
            mac: eni.mac.clone(),
            device_index: eni.attachment.as_ref().map_or(0, |a| a.device_index),
        }
    }
}

pub fn is_trunk(eni: &EniDescription) -> bool {
    eni.interface_type == TRUNK_INTERFACE_TYPE
}

/// The trunk as host plumbing sees it: a secondary ENI in `subnet` (the node's).
pub fn host_info(eni: &EniDescription, subnet: Ipv4Net) -> EniInfo {
    EniInfo {
        id: eni.id.clone(),
        mac: eni.mac.clone(),
        device_index: eni.attachment.as_ref().map_or(0, |a| a.device_index),
        primary: false,
        primary_ip: eni.primary_ip,
        subnet,
    }
}

/// Creates the trunk with the node's groups and ipamd's tags, attaches it at the highest free
/// device index with delete-on-termination, and sets it up on the node. Whatever fails after
/// the create is undone, so a failed attempt leaves no ENI behind.
pub async fn create(
    node: &Node,
    ec2: &Ec2,
    host: &Host,
    instance_max_enis: u32,
) -> Result<Trunk, TrunkError> {
    let id = &node.identity;
    let attached = ec2.attached_enis(&id.instance_id).await?;
    let used: Vec<u32> = attached.iter().map(|(_, i)| *i).collect();
    // MAX_ENI counts the trunk too: it is an ENI ipamd put there.
    let cap = node
        .config
        .max_eni
        .map_or(instance_max_enis, |m| m.min(instance_max_enis));
    let index = ec2::highest_free_device_index(&used, instance_max_enis)
        .filter(|_| (attached.len() as u32) < cap)
        .ok_or(TrunkError::NoSlot {
            attached: attached.len() as u32,
            max: cap,
        })?;
    let config = &node.config;
    let new = NewEni {
        subnet_id: &id.subnet_id,
        security_groups: &id.security_groups,
        description: TRUNK_DESCRIPTION.into(),
        tags: ec2::eni_tags(
            &id.instance_id,
            config.cluster_name.as_deref(),
            &config.additional_eni_tags,
            SystemTime::now(),
        ),
        addresses: AddressRequest::Ips(0),
    };
    let created = ec2.create_trunk_eni(&new).await?;
    tracing::info!(eni = %created.id, device_index = index, "trunk eni created");
    match attach_and_plumb(node, ec2, host, &created, index).await {
        Ok(trunk) => Ok(trunk),
        Err(e) => {
            if let Err(del) = delete_when_detached(ec2, &created.id).await {
                tracing::warn!(
                    eni = %created.id,
                    error = %del,
                    "could not delete the failed trunk eni"
                );
            }
            Err(e)
        }
    }
}

async fn attach_and_plumb(
    node: &Node,
    ec2: &Ec2,
    host: &Host,
    created: &EniDescription,
    index: u32,
) -> Result<Trunk, TrunkError> {
    let instance = &node.identity.instance_id;
    let attachment = ec2.attach_eni(&created.id, instance, index).await?;
    if let Err(e) = ec2
        .set_delete_on_termination(&created.id, &attachment)
        .await
    {
        tracing::warn!(
            eni = %created.id,
            error = %e,
            "could not set delete-on-termination on the trunk"
        );
    }
    let mut described = created.clone();
    described.attachment = Some(ec2::EniAttachment {
        id: attachment.clone(),
        device_index: index,
        network_card: 0,
        instance_id: Some(instance.clone()),
    });
    let info = host_info(&described, node.identity.subnet_cidr);
    if let Err(e) = host.setup_trunk_eni(&info).await {
        let _ = ec2.detach_eni(&attachment).await;
        return Err(e.into());
    }
    tracing::info!(eni = %created.id, device_index = index, "trunk eni attached");
    Ok(Trunk::from_description(&described))
}

/// EC2 refuses to delete an ENI until its detach has finished; a few tries cover that.
async fn delete_when_detached(ec2: &Ec2, eni_id: &str) -> Result<(), Ec2Error> {
    let mut last = Ok(());
    for _ in 0..10 {
        last = ec2.delete_eni(eni_id).await;
        if last.is_ok() {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    last
}

/// The tags of a branch ENI on `trunk` with `vlan_id`, as the VPC Resource Controller tags
/// its own, plus ADDITIONAL_ENI_TAGS.
pub fn branch_tags(node: &Node, trunk: &Trunk, vlan_id: u16) -> BTreeMap<String, String> {
    let config = &node.config;
    let mut tags = config.additional_eni_tags.clone();
    tags.insert(TAG_VLAN_ID.into(), vlan_id.to_string());
    tags.insert(TAG_TRUNK_ENI_ID.into(), trunk.eni_id.clone());
    tags.insert(
        ec2::TAG_INSTANCE_ID.into(),
        node.identity.instance_id.clone(),
    );
    tags.insert(ec2::TAG_OWNER.into(), BRANCH_OWNER.into());
    if let Some(cluster) = &config.cluster_name {
        tags.insert(format!("kubernetes.io/cluster/{cluster}"), "owned".into());
    }
    tags
}

/// What a new branch ENI is made of.
pub fn new_branch<'a>(
    node: &'a Node,
    groups: &'a [String],
    tags: BTreeMap<String, String>,
) -> NewEni<'a> {
    NewEni {
        subnet_id: &node.identity.subnet_id,
        security_groups: groups,
        description: BRANCH_DESCRIPTION.into(),
        tags,
        addresses: AddressRequest::Ips(0),
    }
}
