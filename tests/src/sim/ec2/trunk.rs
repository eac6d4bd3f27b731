//! Trunking: a trunk ENI attached to an instance carries branch ENIs, each on its own VLAN
//! (AssociateTrunkInterface, DescribeTrunkInterfaceAssociations, DisassociateTrunkInterface).
//!
//! EC2 documents no error codes for these actions. The codes here follow what clients have
//! observed (`InvalidVlanId.Duplicate` with "VlanId 'N' is in use", `InvalidAssociationID.NotFound`)
//! and EC2's usual families otherwise; a trunk that is full answers
//! `BranchInterfaceLimitExceeded`. While associated, a branch reports interfaceType `branch` and
//! status `in-use` without an attachment, and it may be deleted without being disassociated
//! first, which ends its association.

use super::error::Ec2Error;
use super::filter::{self, Filter};
use super::model::{Eni, Instance, InterfaceType, TrunkAssociation, Vpc};

/// The VLAN ids 802.1Q leaves for use (0 and 4095 are reserved).
pub const VLAN_IDS: std::ops::RangeInclusive<i64> = 1..=4094;

/// An AssociateTrunkInterface request, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Associate {
    pub branch: String,
    pub trunk: String,
    pub vlan_id: Option<i64>,
    pub gre_key: Option<i64>,
    pub client_token: Option<String>,
}

/// What a ClientToken was first used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUse {
    Associated {
        request: Associate,
        answer: TrunkAssociation,
    },
    Disassociated {
        association_id: String,
    },
}

impl Vpc {
    pub fn associate_trunk(&mut self, req: &Associate) -> Result<TrunkAssociation, Ec2Error> {
        if let Some(token) = &req.client_token {
            match self.client_tokens.get(token) {
                Some(TokenUse::Associated { request, answer }) if request == req => {
                    return Ok(answer.clone())
                }
                Some(_) => return Err(token_mismatch(token)),
                None => {}
            }
        }
        let vlan_id = self.check_associate(req)?;
        let id = self.fresh_id("trunk-assoc");
        let branch = self.eni_mut(&req.branch)?;
        let association = TrunkAssociation {
            id: id.clone(),
            trunk_eni: req.trunk.clone(),
            branch_eni: req.branch.clone(),
            vlan_id,
            branch_type_before: branch.interface_type,
        };
        branch.interface_type = InterfaceType::Branch;
        branch.association = Some(id.clone());
        self.trunk_associations.insert(id, association.clone());
        if let Some(token) = &req.client_token {
            let used = TokenUse::Associated {
                request: req.clone(),
                answer: association.clone(),
            };
            self.client_tokens.insert(token.clone(), used);
        }
        Ok(association)
    }

    /// Validates an association and returns its VLAN id.
    fn check_associate(&self, req: &Associate) -> Result<u16, Ec2Error> {
        let vlan_id = check_vlan(req.vlan_id, req.gre_key)?;
        let trunk = self.eni(&req.trunk)?;
        let branch = self.eni(&req.branch)?;
        let instance = self.trunk_instance(trunk)?;
        check_branch(branch, trunk)?;

        let carried = self.branches_of(&trunk.id);
        if carried.iter().any(|a| a.vlan_id == vlan_id) {
            return Err(Ec2Error::new(
                "InvalidVlanId.Duplicate",
                format!("VlanId '{vlan_id}' is in use"),
            ));
        }
        let limit = instance.itype.branch_enis;
        if carried.len() as u32 >= limit {
            return Err(Ec2Error::new(
                "BranchInterfaceLimitExceeded",
                format!(
                    "trunk interface '{}' on instance type {} carries at most {limit} branch \
                     interfaces",
                    trunk.id, instance.itype.name
                ),
            ));
        }
        Ok(vlan_id)
    }

    /// The instance a trunk is attached to; only an attached ENI of type trunk carries branches.
    fn trunk_instance(&self, trunk: &Eni) -> Result<&Instance, Ec2Error> {
        if trunk.interface_type != InterfaceType::Trunk {
            return Err(Ec2Error::invalid_value(format!(
                "network interface '{}' is not a trunk interface",
                trunk.id
            )));
        }
        let instance_id = trunk.instance_id().ok_or_else(|| {
            Ec2Error::new(
                "IncorrectState",
                format!(
                    "trunk interface '{}' is not attached to an instance",
                    trunk.id
                ),
            )
        })?;
        self.instance(instance_id)
    }

    pub fn disassociate_trunk(
        &mut self,
        association_id: &str,
        client_token: Option<&str>,
    ) -> Result<(), Ec2Error> {
        if let Some(token) = client_token {
            match self.client_tokens.get(token) {
                Some(TokenUse::Disassociated {
                    association_id: done,
                }) if done == association_id => return Ok(()),
                Some(_) => return Err(token_mismatch(token)),
                None => {}
            }
        }
        if !self.trunk_associations.contains_key(association_id) {
            return Err(Ec2Error::association_not_found(association_id));
        }
        self.end_association(association_id);
        if let Some(token) = client_token {
            let used = TokenUse::Disassociated {
                association_id: association_id.to_string(),
            };
            self.client_tokens.insert(token.to_string(), used);
        }
        Ok(())
    }

    /// Ends every association `eni_id` takes part in, as trunk or as branch.
    pub(super) fn end_associations(&mut self, eni_id: &str) {
        let ids: Vec<String> = self
            .trunk_associations
            .values()
            .filter(|a| a.trunk_eni == eni_id || a.branch_eni == eni_id)
            .map(|a| a.id.clone())
            .collect();
        for id in ids {
            self.end_association(&id);
        }
    }

    fn end_association(&mut self, id: &str) {
        let Some(association) = self.trunk_associations.remove(id) else {
            return;
        };
        if let Some(branch) = self.enis.get_mut(&association.branch_eni) {
            branch.interface_type = association.branch_type_before;
            branch.association = None;
        }
    }

    pub fn branches_of(&self, trunk_eni: &str) -> Vec<&TrunkAssociation> {
        self.trunk_associations
            .values()
            .filter(|a| a.trunk_eni == trunk_eni)
            .collect()
    }

    pub fn describe_trunk_associations(
        &self,
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<&TrunkAssociation>, Ec2Error> {
        let mut chosen: Vec<&TrunkAssociation> = if ids.is_empty() {
            self.trunk_associations.values().collect()
        } else {
            ids.iter()
                .map(|id| {
                    let found = self.trunk_associations.get(id);
                    found.ok_or_else(|| Ec2Error::association_not_found(id))
                })
                .collect::<Result<_, _>>()?
        };
        chosen.sort_by(|a, b| a.id.cmp(&b.id));
        chosen.dedup_by(|a, b| a.id == b.id);
        filter::apply(chosen, filters, &association_field)
    }
}

fn association_field(a: &TrunkAssociation, name: &str) -> Option<Vec<String>> {
    match name {
        "trunk-interface-association.trunk-interface-id" => Some(vec![a.trunk_eni.clone()]),
        "trunk-interface-association.branch-interface-id" => Some(vec![a.branch_eni.clone()]),
        "interface-protocol" => Some(vec!["VLAN".to_string()]),
        // Only VLAN associations exist here, and they have no GRE key.
        "gre-key" => Some(Vec::new()),
        _ => None,
    }
}

/// The VLAN id of a request: given, in 1..=4094, and not mixed with GRE.
fn check_vlan(vlan_id: Option<i64>, gre_key: Option<i64>) -> Result<u16, Ec2Error> {
    match (vlan_id, gre_key) {
        (Some(_), Some(_)) => Err(Ec2Error::combination(
            "VlanId and GreKey cannot be used together",
        )),
        (None, Some(_)) => Err(Ec2Error::invalid_value(
            "the GRE protocol is not supported for trunk interfaces here; use VlanId",
        )),
        (None, None) => Err(Ec2Error::missing("VlanId")),
        (Some(id), None) if !VLAN_IDS.contains(&id) => Err(Ec2Error::invalid_value(format!(
            "VlanId {id} is outside {}..={}",
            VLAN_IDS.start(),
            VLAN_IDS.end()
        ))),
        (Some(id), None) => Ok(id as u16),
    }
}

/// A branch must be a plain (or branch-typed) ENI that is neither attached nor on a trunk, in
/// the trunk's availability zone.
fn check_branch(branch: &Eni, trunk: &Eni) -> Result<(), Ec2Error> {
    let id = &branch.id;
    if let Some(association) = &branch.association {
        return Err(Ec2Error::new(
            "InvalidNetworkInterface.InUse",
            format!("branch interface '{id}' is already in association '{association}'"),
        ));
    }
    if branch.attachment.is_some() {
        return Err(Ec2Error::new(
            "InvalidNetworkInterface.InUse",
            format!("interface '{id}' is attached to an instance and cannot be a branch"),
        ));
    }
    if !matches!(
        branch.interface_type,
        InterfaceType::Interface | InterfaceType::Branch
    ) {
        return Err(Ec2Error::invalid_value(format!(
            "interface '{id}' of type {} cannot be a branch interface",
            branch.interface_type.as_str()
        )));
    }
    if branch.az != trunk.az {
        return Err(Ec2Error::invalid_value(format!(
            "branch interface '{id}' in {} and trunk interface '{}' in {} are in different \
             availability zones",
            branch.az, trunk.id, trunk.az
        )));
    }
    Ok(())
}

fn token_mismatch(token: &str) -> Ec2Error {
    Ec2Error::new(
        "IdempotentParameterMismatch",
        format!("client token '{token}' was already used for a different request"),
    )
}
