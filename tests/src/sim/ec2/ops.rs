//! The EC2 actions that change the VPC, with EC2's rules and error codes. Every action checks
//! everything before it changes anything, so a failed call leaves the VPC as it was.

use std::net::Ipv4Addr;

use chrono::Utc;
use ipnet::Ipv4Net;

use super::error::Ec2Error;
use super::instance_types::MAX_IPV4_PER_ENI;
use super::model::{Attachment, Eni, Instance, InterfaceType, Tags, Vpc};
use super::pool::AddressPool;

#[derive(Debug, Clone)]
pub struct CreateEni {
    pub subnet_id: String,
    pub description: String,
    pub groups: Vec<String>,
    pub primary_ip: Option<Ipv4Addr>,
    pub secondary_count: u32,
    pub prefix_count: u32,
    pub interface_type: InterfaceType,
    pub tags: Tags,
}

impl Default for CreateEni {
    fn default() -> Self {
        Self {
            subnet_id: String::new(),
            description: String::new(),
            groups: Vec::new(),
            primary_ip: None,
            secondary_count: 0,
            prefix_count: 0,
            interface_type: InterfaceType::Interface,
            tags: Tags::new(),
        }
    }
}

/// What AssignPrivateIpAddresses asks for; exactly one of the four may be set.
#[derive(Debug, Clone, Default)]
pub struct Assign {
    pub count: Option<u32>,
    pub ips: Vec<Ipv4Addr>,
    pub prefix_count: Option<u32>,
    pub prefixes: Vec<Ipv4Net>,
}

/// The one attribute a ModifyNetworkInterfaceAttribute call changes.
#[derive(Debug, Clone)]
pub enum EniAttribute {
    Attachment {
        attachment_id: String,
        delete_on_termination: bool,
    },
    Groups(Vec<String>),
    Description(String),
    SourceDestCheck(bool),
}

impl Vpc {
    pub fn create_eni(&mut self, mut req: CreateEni) -> Result<&Eni, Ec2Error> {
        let az = self.subnet(&req.subnet_id)?.az.clone();
        if req.groups.is_empty() {
            req.groups = vec![self.default_group.clone()];
        }
        self.check_groups(&req.groups)?;
        if req.secondary_count > 0 && req.prefix_count > 0 {
            return Err(Ec2Error::combination(
                "SecondaryPrivateIpAddressCount and Ipv4PrefixCount cannot be used together",
            ));
        }
        let slots = 1 + req.secondary_count + req.prefix_count;
        if slots > MAX_IPV4_PER_ENI {
            return Err(limit_exceeded(slots, MAX_IPV4_PER_ENI, "a new interface"));
        }

        let pool = &mut self.subnets.get_mut(&req.subnet_id).expect("checked").pool;
        let (ips, prefixes) =
            allocate(pool, req.primary_ip, req.secondary_count, req.prefix_count)?;
        let id = self.fresh_id("eni");
        let eni = Eni {
            id: id.clone(),
            subnet_id: req.subnet_id,
            vpc_id: self.id.clone(),
            az,
            description: req.description,
            groups: req.groups,
            mac: self.fresh_mac(),
            interface_type: req.interface_type,
            private_ips: ips,
            prefixes,
            attachment: None,
            tags: req.tags,
            source_dest_check: true,
            requester_managed: false,
            association: None,
        };
        Ok(self.enis.entry(id).or_insert(eni))
    }

    /// Attaches an ENI and returns the attachment id.
    pub fn attach(
        &mut self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        card_index: u32,
    ) -> Result<String, Ec2Error> {
        self.check_attach(eni_id, instance_id, device_index, card_index)?;
        let id = self.fresh_id("eni-attach");
        let attachment = Attachment {
            id: id.clone(),
            instance_id: instance_id.to_string(),
            device_index,
            network_card_index: card_index,
            delete_on_termination: false,
            attach_time: Utc::now(),
        };
        self.eni_mut(eni_id)?.attachment = Some(attachment);
        Ok(id)
    }

    fn check_attach(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        card_index: u32,
    ) -> Result<(), Ec2Error> {
        let eni = self.eni(eni_id)?;
        let instance = self.instance(instance_id)?;
        check_interface_fits(eni, instance)?;
        if card_index != 0 {
            return Err(Ec2Error::invalid_value(format!(
                "network card index {card_index} is not valid for instance type {}",
                instance.itype.name
            )));
        }

        let attached = self.instance_enis(instance_id);
        if attached.len() as u32 >= instance.itype.max_enis {
            return Err(Ec2Error::new(
                "AttachmentLimitExceeded",
                format!(
                    "interface count {} exceeds the limit for {}",
                    attached.len() + 1,
                    instance.itype.name
                ),
            ));
        }
        check_one_trunk(eni, &attached, instance_id)?;
        let index_taken = attached
            .iter()
            .filter_map(|e| e.attachment.as_ref())
            .any(|a| a.device_index == device_index);
        if index_taken {
            return Err(Ec2Error::invalid_value(format!(
                "instance '{instance_id}' already has an interface attached at device index \
                 '{device_index}'"
            )));
        }
        Ok(())
    }

    /// Detaches and returns the ENI id. `force` is accepted; detaching is immediate here. A
    /// trunk leaves its branches behind: their associations end, as when its instance stops.
    pub fn detach(&mut self, attachment_id: &str, _force: bool) -> Result<String, Ec2Error> {
        let eni = self
            .enis
            .values()
            .find(|e| e.attachment.as_ref().is_some_and(|a| a.id == attachment_id))
            .ok_or_else(|| Ec2Error::attachment_not_found(attachment_id))?;
        if eni.attachment.as_ref().is_some_and(|a| a.device_index == 0) {
            return Err(Ec2Error::new(
                "OperationNotPermitted",
                "the network interface at device index 0 cannot be detached",
            ));
        }
        let eni_id = eni.id.clone();
        self.end_associations(&eni_id);
        self.eni_mut(&eni_id)?.attachment = None;
        Ok(eni_id)
    }

    pub fn delete_eni(&mut self, eni_id: &str) -> Result<(), Ec2Error> {
        let eni = self.eni(eni_id)?;
        if eni.attachment.is_some() {
            return Err(Ec2Error::new(
                "InvalidNetworkInterface.InUse",
                format!("network interface '{eni_id}' is currently in use"),
            ));
        }
        // EC2 deletes an associated branch without a DisassociateTrunkInterface first (the VPC
        // resource controller relied on that for years); the association goes with it.
        self.end_associations(eni_id);
        let eni = self.enis.remove(eni_id).expect("checked");
        let pool = &mut self
            .subnets
            .get_mut(&eni.subnet_id)
            .expect("eni subnet")
            .pool;
        eni.private_ips.iter().for_each(|ip| pool.release(*ip));
        eni.prefixes.iter().for_each(|p| pool.release_prefix(*p));
        Ok(())
    }

    /// Assigns addresses or prefixes and returns what was assigned.
    pub fn assign(
        &mut self,
        eni_id: &str,
        req: Assign,
    ) -> Result<(Vec<Ipv4Addr>, Vec<Ipv4Net>), Ec2Error> {
        let wanted = self.check_assign(eni_id, &req)?;
        let subnet_id = self.eni(eni_id)?.subnet_id.clone();
        let pool = &mut self.subnets.get_mut(&subnet_id).expect("eni subnet").pool;
        let (ips, prefixes) = match req {
            Assign { count: Some(n), .. } => (pool.alloc(n)?, vec![]),
            Assign {
                prefix_count: Some(n),
                ..
            } => (vec![], pool.alloc_prefixes(n)?),
            Assign { ref ips, .. } if !ips.is_empty() => (take_all(pool, ips)?, vec![]),
            Assign { prefixes, .. } => (vec![], take_all_prefixes(pool, &prefixes)?),
        };
        debug_assert_eq!((ips.len() + prefixes.len()) as u32, wanted);
        let eni = self.eni_mut(eni_id)?;
        eni.private_ips.extend(&ips);
        eni.prefixes.extend(&prefixes);
        Ok((ips, prefixes))
    }

    /// Validates an assignment and returns how many slots it takes.
    fn check_assign(&self, eni_id: &str, req: &Assign) -> Result<u32, Ec2Error> {
        let eni = self.eni(eni_id)?;
        let kinds = [
            req.count.is_some(),
            !req.ips.is_empty(),
            req.prefix_count.is_some(),
            !req.prefixes.is_empty(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            0 => return Err(Ec2Error::missing(
                "SecondaryPrivateIpAddressCount, PrivateIpAddress, Ipv4PrefixCount or Ipv4Prefix",
            )),
            1 => {}
            _ => {
                return Err(Ec2Error::combination(
                    "specify only one of SecondaryPrivateIpAddressCount, PrivateIpAddress, \
                     Ipv4PrefixCount and Ipv4Prefix",
                ))
            }
        }
        let wanted = req
            .count
            .or(req.prefix_count)
            .unwrap_or((req.ips.len() + req.prefixes.len()) as u32);
        if wanted == 0 {
            return Err(Ec2Error::invalid_value(
                "the address count must be at least 1",
            ));
        }
        let limit = self.slot_limit(eni);
        if eni.slots() + wanted > limit {
            return Err(limit_exceeded(eni.slots() + wanted, limit, eni_id));
        }
        Ok(wanted)
    }

    pub fn unassign(
        &mut self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Net],
    ) -> Result<(), Ec2Error> {
        check_unassign(self.eni(eni_id)?, ips, prefixes)?;
        let eni = self.eni_mut(eni_id)?;
        eni.private_ips.retain(|ip| !ips.contains(ip));
        eni.prefixes.retain(|p| !prefixes.contains(p));
        let subnet_id = eni.subnet_id.clone();
        let pool = &mut self.subnets.get_mut(&subnet_id).expect("eni subnet").pool;
        ips.iter().for_each(|ip| pool.release(*ip));
        prefixes.iter().for_each(|p| pool.release_prefix(*p));
        Ok(())
    }

    pub fn modify_eni(&mut self, eni_id: &str, attribute: EniAttribute) -> Result<(), Ec2Error> {
        if let EniAttribute::Groups(groups) = &attribute {
            if groups.is_empty() {
                return Err(Ec2Error::missing("SecurityGroupId"));
            }
            self.check_groups(groups)?;
        }
        let eni = self.eni_mut(eni_id)?;
        match attribute {
            EniAttribute::Attachment {
                attachment_id,
                delete_on_termination,
            } => match eni.attachment.as_mut() {
                Some(a) if a.id == attachment_id => a.delete_on_termination = delete_on_termination,
                _ => return Err(Ec2Error::attachment_not_found(attachment_id)),
            },
            EniAttribute::Groups(groups) => eni.groups = groups,
            EniAttribute::Description(text) => eni.description = text,
            EniAttribute::SourceDestCheck(on) => eni.source_dest_check = on,
        }
        Ok(())
    }

    pub fn create_tags(
        &mut self,
        ids: &[String],
        tags: &[(String, String)],
    ) -> Result<(), Ec2Error> {
        self.check_taggable(ids)?;
        for id in ids {
            let target = self.tags_mut(id)?;
            for (k, v) in tags {
                target.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    }

    /// Removes tags; a tag given with a value is removed only when the value matches.
    pub fn delete_tags(
        &mut self,
        ids: &[String],
        tags: &[(String, Option<String>)],
    ) -> Result<(), Ec2Error> {
        self.check_taggable(ids)?;
        for id in ids {
            let target = self.tags_mut(id)?;
            if tags.is_empty() {
                target.clear();
            }
            for (k, v) in tags {
                if v.as_ref().is_none_or(|v| target.get(k) == Some(v)) {
                    target.remove(k);
                }
            }
        }
        Ok(())
    }

    fn check_taggable(&mut self, ids: &[String]) -> Result<(), Ec2Error> {
        if ids.is_empty() {
            return Err(Ec2Error::missing("ResourceId"));
        }
        ids.iter().try_for_each(|id| self.tags_mut(id).map(|_| ()))
    }

    fn tags_mut(&mut self, id: &str) -> Result<&mut Tags, Ec2Error> {
        let kind = id.rsplit_once('-').map_or("", |(kind, _)| kind);
        let tags = match kind {
            "eni" => self.enis.get_mut(id).map(|e| &mut e.tags),
            "subnet" => self.subnets.get_mut(id).map(|s| &mut s.tags),
            "i" => self.instances.get_mut(id).map(|i| &mut i.tags),
            "sg" => self.groups.get_mut(id).map(|g| &mut g.tags),
            "vpc" if id == self.id => Some(&mut self.tags),
            _ => None,
        };
        tags.ok_or_else(|| match kind {
            "eni" => Ec2Error::eni_not_found(id),
            "subnet" => Ec2Error::subnet_not_found(id),
            "i" => Ec2Error::instance_not_found(id),
            "sg" => Ec2Error::group_not_found(id),
            "vpc" => Ec2Error::new(
                "InvalidVpcID.NotFound",
                format!("the vpc ID '{id}' does not exist"),
            ),
            _ => Ec2Error::new("InvalidID", format!("the ID '{id}' is not valid")),
        })
    }

    fn check_groups(&self, groups: &[String]) -> Result<(), Ec2Error> {
        match groups.iter().find(|g| !self.groups.contains_key(*g)) {
            Some(missing) => Err(Ec2Error::group_not_found(missing)),
            None => Ok(()),
        }
    }

    pub(super) fn fresh_id(&mut self, prefix: &str) -> String {
        loop {
            let id = self.ids.resource_id(prefix);
            let taken = self.enis.contains_key(&id)
                || self.trunk_associations.contains_key(&id)
                || self
                    .enis
                    .values()
                    .any(|e| e.attachment.as_ref().is_some_and(|a| a.id == id));
            if !taken {
                return id;
            }
        }
    }

    fn fresh_mac(&mut self) -> String {
        loop {
            let mac = self.ids.mac();
            if !self.enis.values().any(|e| e.mac == mac) {
                return mac;
            }
        }
    }
}

/// The checks of an attachment that concern the interface itself.
fn check_interface_fits(eni: &Eni, instance: &Instance) -> Result<(), Ec2Error> {
    let (eni_id, itype) = (&eni.id, instance.itype);
    if eni.attachment.is_some() {
        return Err(Ec2Error::new(
            "InvalidNetworkInterface.InUse",
            format!("interface {eni_id} is currently in use"),
        ));
    }
    if eni.interface_type == InterfaceType::Branch {
        return Err(Ec2Error::invalid_value(format!(
            "branch interface {eni_id} can only be associated with a trunk interface"
        )));
    }
    if eni.interface_type == InterfaceType::Trunk && itype.branch_enis == 0 {
        return Err(Ec2Error::invalid_value(format!(
            "instance type {} does not support trunk interfaces",
            itype.name
        )));
    }
    if eni.az != instance.az {
        return Err(Ec2Error::invalid_value(format!(
            "interface {eni_id} in {} and instance {} in {} are in different availability zones",
            eni.az, instance.id, instance.az
        )));
    }
    if eni.slots() > itype.ipv4_per_eni {
        return Err(limit_exceeded(eni.slots(), itype.ipv4_per_eni, eni_id));
    }
    Ok(())
}

/// An instance carries at most one trunk interface.
fn check_one_trunk(eni: &Eni, attached: &[&Eni], instance_id: &str) -> Result<(), Ec2Error> {
    let has_trunk = attached
        .iter()
        .any(|e| e.interface_type == InterfaceType::Trunk);
    if eni.interface_type == InterfaceType::Trunk && has_trunk {
        return Err(Ec2Error::invalid_value(format!(
            "instance '{instance_id}' already has a trunk interface"
        )));
    }
    Ok(())
}

fn limit_exceeded(wanted: u32, limit: u32, what: &str) -> Ec2Error {
    Ec2Error::new(
        "PrivateIpAddressLimitExceeded",
        format!("number of private addresses {wanted} exceeds the limit {limit} for {what}"),
    )
}

fn check_unassign(eni: &Eni, ips: &[Ipv4Addr], prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
    if ips.is_empty() && prefixes.is_empty() {
        return Err(Ec2Error::missing("PrivateIpAddress or Ipv4Prefix"));
    }
    if let Some(ip) = ips.iter().find(|ip| **ip == eni.primary_ip()) {
        return Err(Ec2Error::invalid_value(format!(
            "the primary address {ip} of {} cannot be unassigned",
            eni.id
        )));
    }
    if let Some(ip) = ips.iter().find(|ip| !eni.private_ips.contains(ip)) {
        return Err(Ec2Error::invalid_value(format!(
            "address {ip} is not assigned to interface {}",
            eni.id
        )));
    }
    if let Some(p) = prefixes.iter().find(|p| !eni.prefixes.contains(p)) {
        return Err(Ec2Error::invalid_value(format!(
            "prefix {p} is not assigned to interface {}",
            eni.id
        )));
    }
    Ok(())
}

/// The addresses of a new ENI: its primary, then secondaries or prefixes; all or none.
fn allocate(
    pool: &mut AddressPool,
    primary: Option<Ipv4Addr>,
    secondaries: u32,
    prefixes: u32,
) -> Result<(Vec<Ipv4Addr>, Vec<Ipv4Net>), Ec2Error> {
    let mut ips = match primary {
        Some(ip) => {
            pool.take(ip)?;
            vec![ip]
        }
        None => pool.alloc(1)?,
    };
    let rest = pool.alloc(secondaries).and_then(|more| {
        ips.extend(more);
        pool.alloc_prefixes(prefixes)
    });
    match rest {
        Ok(blocks) => Ok((ips, blocks)),
        Err(e) => {
            ips.iter().for_each(|ip| pool.release(*ip));
            Err(e.into())
        }
    }
}

fn take_all(pool: &mut AddressPool, ips: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>, Ec2Error> {
    for (n, ip) in ips.iter().enumerate() {
        if ips[..n].contains(ip) {
            return Err(Ec2Error::invalid_value(format!(
                "address {ip} is given twice"
            )));
        }
        pool.check_free(*ip)?;
    }
    ips.iter()
        .for_each(|ip| pool.take(*ip).expect("checked free"));
    Ok(ips.to_vec())
}

fn take_all_prefixes(
    pool: &mut AddressPool,
    prefixes: &[Ipv4Net],
) -> Result<Vec<Ipv4Net>, Ec2Error> {
    let mut taken = Vec::new();
    for p in prefixes {
        if let Err(e) = pool.take_prefix(*p) {
            taken.iter().for_each(|t| pool.release_prefix(*t));
            return Err(e.into());
        }
        taken.push(*p);
    }
    Ok(taken)
}
