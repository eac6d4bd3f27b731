//! The state of one simulated VPC: subnets, security groups, instances and ENIs. The EC2
//! actions that change it live in `ops`; this file holds the types, the start state built from
//! a scenario, and the read side (lookups and filters).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use chrono::{DateTime, SecondsFormat, Utc};
use ipnet::Ipv4Net;

use super::error::Ec2Error;
use super::filter::{self, Filter};
use super::ids::IdGen;
use super::instance_types::{self, InstanceType};
use super::pool::{AddressPool, PoolError};
use crate::sim::scenario::{Role, Scenario, SgRule};

pub type Tags = BTreeMap<String, String>;

pub const OWNER_ID: &str = "111122223333";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceType {
    Interface,
    Trunk,
    Branch,
    Efa,
    EfaOnly,
}

impl InterfaceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interface => "interface",
            Self::Trunk => "trunk",
            Self::Branch => "branch",
            Self::Efa => "efa",
            Self::EfaOnly => "efa-only",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, Ec2Error> {
        match raw {
            "interface" => Ok(Self::Interface),
            "trunk" => Ok(Self::Trunk),
            "branch" => Ok(Self::Branch),
            "efa" => Ok(Self::Efa),
            "efa-only" => Ok(Self::EfaOnly),
            other => Err(Ec2Error::invalid_value(format!(
                "value '{other}' for parameter InterfaceType is invalid"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub az: String,
    pub pool: AddressPool,
    pub tags: Tags,
}

#[derive(Debug, Clone)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub ingress: Vec<SgRule>,
    pub egress: Vec<SgRule>,
    pub tags: Tags,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub itype: &'static InstanceType,
    pub subnet_id: String,
    pub az: String,
    pub groups: Vec<String>,
    pub role: Role,
    pub tags: Tags,
    pub launch_time: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Attachment {
    pub id: String,
    pub instance_id: String,
    pub device_index: u32,
    pub network_card_index: u32,
    pub delete_on_termination: bool,
    pub attach_time: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Eni {
    pub id: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub az: String,
    pub description: String,
    pub groups: Vec<String>,
    pub mac: String,
    pub interface_type: InterfaceType,
    /// The primary address first, then the secondaries in assignment order.
    pub private_ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
    pub attachment: Option<Attachment>,
    pub tags: Tags,
    pub source_dest_check: bool,
    pub requester_managed: bool,
    /// The trunk association that carries this ENI as a branch.
    pub association: Option<String>,
}

impl Eni {
    pub fn primary_ip(&self) -> Ipv4Addr {
        self.private_ips[0]
    }

    /// A branch riding on a trunk is in use although it has no attachment of its own.
    pub fn status(&self) -> &'static str {
        if self.attachment.is_some() || self.association.is_some() {
            "in-use"
        } else {
            "available"
        }
    }

    /// IPv4 slots in use: every address and every /28 prefix takes one.
    pub fn slots(&self) -> u32 {
        (self.private_ips.len() + self.prefixes.len()) as u32
    }

    pub fn instance_id(&self) -> Option<&str> {
        self.attachment.as_ref().map(|a| a.instance_id.as_str())
    }
}

/// A branch ENI riding on a trunk ENI with its VLAN (AssociateTrunkInterface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkAssociation {
    pub id: String,
    pub trunk_eni: String,
    pub branch_eni: String,
    pub vlan_id: u16,
    /// What the branch reported as its type before it became a branch, restored when the
    /// association ends.
    pub branch_type_before: InterfaceType,
}

#[derive(Debug)]
pub struct Vpc {
    pub region: String,
    pub id: String,
    pub cidr: Ipv4Net,
    /// CIDRs associated after creation (AssociateVpcCidrBlock), by association id.
    pub secondary_cidrs: Vec<(String, Ipv4Net)>,
    pub tags: Tags,
    pub subnets: BTreeMap<String, Subnet>,
    pub groups: BTreeMap<String, SecurityGroup>,
    /// The VPC's default security group, which EC2 gives ENIs and instances created without
    /// one.
    pub default_group: String,
    pub instances: BTreeMap<String, Instance>,
    pub enis: BTreeMap<String, Eni>,
    pub trunk_associations: BTreeMap<String, TrunkAssociation>,
    /// ClientToken of every AssociateTrunkInterface and DisassociateTrunkInterface served, so a
    /// retried call gets the first answer.
    pub(super) client_tokens: BTreeMap<String, super::trunk::TokenUse>,
    pub(super) ids: IdGen,
}

impl From<PoolError> for Ec2Error {
    fn from(e: PoolError) -> Self {
        let code = match e {
            PoolError::InUse(_) => "InvalidIPAddress.InUse",
            PoolError::Exhausted { .. } => "InsufficientFreeAddressesInSubnet",
            PoolError::NoFreeBlocks { .. } => "InsufficientCidrBlocks",
            PoolError::OutOfRange(..) | PoolError::BadPrefix(..) | PoolError::PrefixInUse(_) => {
                "InvalidParameterValue"
            }
        };
        Ec2Error::new(code, e.to_string())
    }
}

pub fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Vpc {
    /// The primary CIDR, then the associated ones in association order.
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
        let mut all = vec![self.cidr];
        all.extend(self.secondary_cidrs.iter().map(|(_, c)| *c));
        all
    }

    /// AssociateVpcCidrBlock: a block of /16 to /28 that overlaps none of the VPC's.
    pub fn associate_cidr(&mut self, vpc_id: &str, cidr: Ipv4Net) -> Result<String, Ec2Error> {
        if vpc_id != self.id {
            return Err(Ec2Error::new(
                "InvalidVpcID.NotFound",
                format!("The vpc ID '{vpc_id}' does not exist"),
            ));
        }
        if !(16..=28).contains(&cidr.prefix_len()) || cidr.trunc() != cidr {
            return Err(Ec2Error::new(
                "InvalidVpc.Range",
                format!("The CIDR '{cidr}' is invalid."),
            ));
        }
        if let Some(taken) = self
            .cidrs()
            .into_iter()
            .find(|c| c.contains(&cidr) || cidr.contains(c))
        {
            return Err(Ec2Error::new(
                "InvalidVpc.Range",
                format!("The CIDR '{cidr}' conflicts with the VPC's CIDR '{taken}'."),
            ));
        }
        let id = self.ids.resource_id("vpc-cidr-assoc");
        self.secondary_cidrs.push((id.clone(), cidr));
        Ok(id)
    }

    /// The VPC as the scenario describes it, each instance running with its primary ENI at
    /// device index 0.
    pub fn from_scenario(scenario: &Scenario) -> Result<Self, Ec2Error> {
        let mut vpc = Self {
            region: scenario.region.clone(),
            id: scenario.vpc.id.clone(),
            cidr: scenario.vpc.cidr,
            secondary_cidrs: Vec::new(),
            tags: Tags::new(),
            subnets: BTreeMap::new(),
            groups: BTreeMap::new(),
            default_group: String::new(),
            instances: BTreeMap::new(),
            enis: BTreeMap::new(),
            trunk_associations: BTreeMap::new(),
            client_tokens: BTreeMap::new(),
            ids: IdGen::new(scenario.seed),
        };
        for s in &scenario.subnets {
            let subnet = Subnet {
                id: s.id.clone(),
                az: s.az.clone(),
                pool: AddressPool::new(s.cidr),
                tags: s.tags.clone(),
            };
            vpc.subnets.insert(s.id.clone(), subnet);
        }
        for g in &scenario.security_groups {
            let group = SecurityGroup {
                id: g.id.clone(),
                name: g.name.clone(),
                ingress: g.ingress.clone(),
                egress: g.egress_rules(),
                tags: Tags::new(),
            };
            vpc.groups.insert(g.id.clone(), group);
        }
        vpc.default_group = vpc.ensure_default_group();
        for spec in &scenario.instances {
            vpc.launch(spec)?;
        }
        Ok(vpc)
    }

    /// The group named "default" if the scenario has one, else one made like EC2 makes it:
    /// everything in from its own members, everything out.
    fn ensure_default_group(&mut self) -> String {
        if let Some(g) = self.groups.values().find(|g| g.name == "default") {
            return g.id.clone();
        }
        let mut id = format!("sg-{}", self.id.trim_start_matches("vpc-"));
        while self.groups.contains_key(&id) {
            id.push('0');
        }
        let from_members = SgRule {
            groups: vec![id.clone()],
            cidrs: Vec::new(),
            ..SgRule::all_traffic()
        };
        let group = SecurityGroup {
            id: id.clone(),
            name: "default".into(),
            ingress: vec![from_members],
            egress: vec![SgRule::all_traffic()],
            tags: Tags::new(),
        };
        self.groups.insert(id.clone(), group);
        id
    }

    fn launch(&mut self, spec: &crate::sim::scenario::InstanceSpec) -> Result<(), Ec2Error> {
        let itype = instance_types::lookup(&spec.instance_type).ok_or_else(|| {
            Ec2Error::invalid_value(format!("unknown instance type {}", spec.instance_type))
        })?;
        let az = self.subnet(&spec.subnet)?.az.clone();
        let groups = if spec.security_groups.is_empty() {
            vec![self.default_group.clone()]
        } else {
            spec.security_groups.clone()
        };
        let eni = self.create_eni(super::ops::CreateEni {
            subnet_id: spec.subnet.clone(),
            groups: groups.clone(),
            primary_ip: spec.private_ip,
            ..Default::default()
        })?;
        let eni_id = eni.id.clone();
        let instance = Instance {
            id: spec.id.clone(),
            itype,
            subnet_id: spec.subnet.clone(),
            az,
            groups,
            role: spec.role,
            tags: spec.tags.clone(),
            launch_time: Utc::now(),
        };
        self.instances.insert(spec.id.clone(), instance);
        self.attach(&eni_id, &spec.id, 0, 0)?;
        if let Some(a) = self.eni_mut(&eni_id)?.attachment.as_mut() {
            a.delete_on_termination = true;
        }
        Ok(())
    }

    pub fn subnet(&self, id: &str) -> Result<&Subnet, Ec2Error> {
        self.subnets
            .get(id)
            .ok_or_else(|| Ec2Error::subnet_not_found(id))
    }

    pub fn instance(&self, id: &str) -> Result<&Instance, Ec2Error> {
        self.instances
            .get(id)
            .ok_or_else(|| Ec2Error::instance_not_found(id))
    }

    pub fn eni(&self, id: &str) -> Result<&Eni, Ec2Error> {
        self.enis.get(id).ok_or_else(|| Ec2Error::eni_not_found(id))
    }

    pub fn eni_mut(&mut self, id: &str) -> Result<&mut Eni, Ec2Error> {
        self.enis
            .get_mut(id)
            .ok_or_else(|| Ec2Error::eni_not_found(id))
    }

    /// ENIs attached to an instance, by device index.
    pub fn instance_enis(&self, instance_id: &str) -> Vec<&Eni> {
        let mut enis: Vec<&Eni> = self
            .enis
            .values()
            .filter(|e| e.instance_id() == Some(instance_id))
            .collect();
        enis.sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
        enis
    }

    pub fn primary_eni(&self, instance_id: &str) -> Option<&Eni> {
        self.instance_enis(instance_id)
            .into_iter()
            .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0))
    }

    /// IPv4 slots an ENI may use: its instance type's limit, or the largest any type allows
    /// while it is not attached.
    pub fn slot_limit(&self, eni: &Eni) -> u32 {
        eni.instance_id()
            .and_then(|id| self.instances.get(id))
            .map_or(instance_types::MAX_IPV4_PER_ENI, |i| i.itype.ipv4_per_eni)
    }

    pub fn group_name(&self, id: &str) -> &str {
        self.groups.get(id).map_or("", |g| g.name.as_str())
    }

    pub fn describe_enis(&self, ids: &[String], filters: &[Filter]) -> Result<Vec<&Eni>, Ec2Error> {
        let chosen = pick(&self.enis, ids, |id| Ec2Error::eni_not_found(id))?;
        filter::apply(chosen, filters, &|eni: &Eni, name: &str| {
            eni_field(eni, name)
        })
    }

    pub fn describe_subnets(
        &self,
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<&Subnet>, Ec2Error> {
        let chosen = pick(&self.subnets, ids, |id| Ec2Error::subnet_not_found(id))?;
        filter::apply(chosen, filters, &|s: &Subnet, name: &str| {
            self.subnet_field(s, name)
        })
    }

    pub fn describe_instances(
        &self,
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<&Instance>, Ec2Error> {
        let chosen = pick(&self.instances, ids, |id| Ec2Error::instance_not_found(id))?;
        filter::apply(chosen, filters, &|i: &Instance, name: &str| {
            self.instance_field(i, name)
        })
    }

    fn subnet_field(&self, s: &Subnet, name: &str) -> Option<Vec<String>> {
        let one = |v: String| Some(vec![v]);
        match name {
            "subnet-id" => one(s.id.clone()),
            "vpc-id" => one(self.id.clone()),
            "availability-zone" => one(s.az.clone()),
            "cidr-block" | "cidr" | "cidrBlock" => one(s.pool.cidr().to_string()),
            "state" => one("available".into()),
            "available-ip-address-count" => one(s.pool.available().to_string()),
            "default-for-az" => one("false".into()),
            "owner-id" => one(OWNER_ID.into()),
            _ => filter::tag_field(&s.tags, name),
        }
    }

    fn instance_field(&self, i: &Instance, name: &str) -> Option<Vec<String>> {
        let one = |v: String| Some(vec![v]);
        let enis = self.instance_enis(&i.id);
        match name {
            "instance-id" => one(i.id.clone()),
            "instance-type" => one(i.itype.name.into()),
            "subnet-id" => one(i.subnet_id.clone()),
            "vpc-id" => one(self.id.clone()),
            "availability-zone" => one(i.az.clone()),
            "instance-state-name" => one("running".into()),
            "private-ip-address" => Some(
                enis.iter()
                    .take(1)
                    .map(|e| e.primary_ip().to_string())
                    .collect(),
            ),
            "network-interface.network-interface-id" => {
                Some(enis.iter().map(|e| e.id.clone()).collect())
            }
            _ => filter::tag_field(&i.tags, name),
        }
    }
}

fn eni_field(eni: &Eni, name: &str) -> Option<Vec<String>> {
    let one = |v: String| Some(vec![v]);
    let att = eni.attachment.as_ref();
    let from_att = |f: &dyn Fn(&Attachment) -> String| Some(att.map(f).into_iter().collect());
    match name {
        "network-interface-id" => one(eni.id.clone()),
        "subnet-id" => one(eni.subnet_id.clone()),
        "vpc-id" => one(eni.vpc_id.clone()),
        "availability-zone" => one(eni.az.clone()),
        "status" => one(eni.status().into()),
        "description" => one(eni.description.clone()),
        "interface-type" => one(eni.interface_type.as_str().into()),
        "mac-address" => one(eni.mac.clone()),
        "owner-id" => one(OWNER_ID.into()),
        "requester-managed" => one(eni.requester_managed.to_string()),
        "source-dest-check" => one(eni.source_dest_check.to_string()),
        "group-id" => Some(eni.groups.clone()),
        "private-ip-address" | "addresses.private-ip-address" => {
            Some(eni.private_ips.iter().map(Ipv4Addr::to_string).collect())
        }
        "attachment.instance-id" => from_att(&|a| a.instance_id.clone()),
        "attachment.attachment-id" => from_att(&|a| a.id.clone()),
        "attachment.device-index" => from_att(&|a| a.device_index.to_string()),
        "attachment.status" => from_att(&|_| "attached".into()),
        "attachment.delete-on-termination" => from_att(&|a| a.delete_on_termination.to_string()),
        _ => filter::tag_field(&eni.tags, name),
    }
}

/// All values of `map` when `ids` is empty, else exactly those ids (each must exist).
fn pick<'a, T>(
    map: &'a BTreeMap<String, T>,
    ids: &[String],
    not_found: fn(&str) -> Ec2Error,
) -> Result<Vec<&'a T>, Ec2Error> {
    if ids.is_empty() {
        return Ok(map.values().collect());
    }
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    sorted
        .into_iter()
        .map(|id| map.get(id).ok_or_else(|| not_found(id)))
        .collect()
}
