//! The hypervisor and the VPC fabric. Each instance is a network namespace; each attached ENI
//! is a veth pair whose instance end is `eth<device index>` with the ENI's MAC and whose other
//! end sits in the fabric namespace. A branch ENI on a trunk is an 802.1Q link on the trunk's
//! fabric end: frames the instance tags with the branch's VLAN id belong to the branch. The
//! fabric routes between subnets, answers ARP for every subnet's router (.1, on its loopback)
//! and, by proxy ARP, for every address it can route elsewhere. It delivers a packet to an ENI
//! only for that ENI's EC2 addresses (a /32 or /28 route per address with a permanent neighbour
//! entry) and filters what it forwards with EC2's source/destination check and security groups
//! (see `firewall`).
//!
//! Hosts outside the VPC, when the scenario names any, share one more namespace behind a
//! virtual private gateway: a veth from the fabric, a /32 route per host, and no address
//! translation on the way, as a site-to-site VPN carries packets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::ec2::model::Eni;
use super::ec2::Vpc;
use super::firewall::{self, FwPort};
use super::netns::{self, NetnsError};
use super::scenario::Role;
use super::secgroup::Policy;

/// MTU of every ENI on current instance types (jumbo frames inside a VPC).
pub const ENI_MTU: u32 = 9001;

/// The fabric end of the link to the hosts outside the VPC; ENI links start with `v` or `b`.
pub const OUTSIDE_LINK: &str = "xoutside";

#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "netns {0} already exists; another simulator uses this prefix or a previous one was killed"
    )]
    Exists(String),
    #[error("no netns for instance {0}")]
    UnknownInstance(String),
}

/// How an ENI reaches its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// Attached: a veth pair into the instance.
    Veth {
        instance_id: String,
        device_index: u32,
    },
    /// A branch: a VLAN on its trunk's veth.
    Vlan { trunk_eni: String, vlan_id: u16 },
}

/// One plugged ENI as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub eni_id: String,
    pub wire: Wire,
    pub mac: String,
    /// The primary address with its subnet's prefix length.
    pub primary: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Secondary addresses (/32) and delegated prefixes (/28); the primary is not in here.
    pub extra: BTreeSet<Ipv4Net>,
    pub source_dest_check: bool,
}

impl Port {
    fn link(&self) -> String {
        match self.wire {
            Wire::Veth { .. } => link_name(&self.eni_id),
            Wire::Vlan { .. } => vlan_link_name(&self.eni_id),
        }
    }

    fn is_vlan(&self) -> bool {
        matches!(self.wire, Wire::Vlan { .. })
    }

    fn same_wire(&self, other: &Port) -> bool {
        (&self.wire, &self.mac, self.primary) == (&other.wire, &other.mac, other.primary)
    }

    fn firewall_port(&self) -> FwPort {
        let mut sources = vec![Ipv4Net::from(self.primary.addr())];
        sources.extend(&self.extra);
        FwPort {
            eni_id: self.eni_id.clone(),
            link: self.link(),
            sources,
            any_source: !self.source_dest_check,
        }
    }
}

/// The fabric end of an ENI's veth: `v` and 14 hex digits of the ENI id (IFNAMSIZ is 16).
pub fn link_name(eni_id: &str) -> String {
    format!("v{}", id_hex(eni_id))
}

/// The fabric's 802.1Q link of a branch ENI: `b` and 14 hex digits of the branch's id.
pub fn vlan_link_name(eni_id: &str) -> String {
    format!("b{}", id_hex(eni_id))
}

fn id_hex(eni_id: &str) -> String {
    eni_id.trim_start_matches("eni-").chars().take(14).collect()
}

/// Everything the datapath should be: the plugged ENIs and the rules that filter them.
#[derive(Debug, Clone, Default)]
pub struct Datapath {
    pub ports: BTreeMap<String, Port>,
    pub policy: Policy,
}

/// What the VPC model says the datapath should be now: a veth port for every attached ENI and
/// a VLAN port for every branch whose trunk is attached.
pub fn desired(vpc: &Vpc) -> Datapath {
    let mut ports = BTreeMap::new();
    for eni in vpc.enis.values() {
        let Some(att) = &eni.attachment else {
            continue;
        };
        let wire = Wire::Veth {
            instance_id: att.instance_id.clone(),
            device_index: att.device_index,
        };
        ports.extend(port(vpc, eni, wire));
    }
    for a in vpc.trunk_associations.values() {
        let trunk_attached = vpc
            .enis
            .get(&a.trunk_eni)
            .is_some_and(|t| t.attachment.is_some());
        let Some(branch) = vpc.enis.get(&a.branch_eni).filter(|_| trunk_attached) else {
            continue;
        };
        let wire = Wire::Vlan {
            trunk_eni: a.trunk_eni.clone(),
            vlan_id: a.vlan_id,
        };
        ports.extend(port(vpc, branch, wire));
    }
    Datapath {
        ports,
        policy: Policy::of(vpc),
    }
}

fn port(vpc: &Vpc, eni: &Eni, wire: Wire) -> Option<(String, Port)> {
    let subnet = vpc.subnets.get(&eni.subnet_id)?;
    let prefix_len = subnet.pool.cidr().prefix_len();
    let primary = Ipv4Net::new(eni.primary_ip(), prefix_len).expect("subnet prefix length");
    let secondaries = eni.private_ips[1..].iter().map(|ip| Ipv4Net::from(*ip));
    let port = Port {
        eni_id: eni.id.clone(),
        wire,
        mac: eni.mac.clone(),
        primary,
        gateway: subnet.pool.gateway(),
        extra: secondaries.chain(eni.prefixes.iter().copied()).collect(),
        source_dest_check: eni.source_dest_check,
    };
    Some((eni.id.clone(), port))
}

/// The hosts beyond the VPC: one namespace holding every address on its loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outside {
    pub netns: String,
    pub addresses: Vec<Ipv4Addr>,
}

#[derive(Debug)]
pub struct Fabric {
    fabric_ns: String,
    instance_ns: BTreeMap<String, String>,
    outside: Option<Outside>,
    created: Vec<String>,
    ports: BTreeMap<String, Port>,
    /// Whether this kernel makes 802.1Q links; without them branches exist only in the API.
    vlan_datapath: bool,
    /// The filter table last applied, to skip identical reloads.
    firewall: Option<String>,
    torn_down: bool,
}

impl Fabric {
    /// `outside` are the scenario's hosts beyond the VPC; none means no outside namespace.
    pub fn new(prefix: &str, vpc: &Vpc, outside: &[Ipv4Addr]) -> Self {
        let instance_ns = vpc
            .instances
            .keys()
            .map(|id| (id.clone(), format!("{prefix}-{id}")))
            .collect();
        let outside = (!outside.is_empty()).then(|| Outside {
            netns: format!("{prefix}-outside"),
            addresses: outside.to_vec(),
        });
        Self {
            fabric_ns: format!("{prefix}-fabric"),
            instance_ns,
            outside,
            created: Vec::new(),
            ports: BTreeMap::new(),
            vlan_datapath: false,
            firewall: None,
            torn_down: false,
        }
    }

    pub fn fabric_netns(&self) -> &str {
        &self.fabric_ns
    }

    pub fn vlan_datapath(&self) -> bool {
        self.vlan_datapath
    }

    pub fn outside(&self) -> Option<&Outside> {
        self.outside.as_ref()
    }

    pub fn instance_netns(&self, instance_id: &str) -> Result<&str, FabricError> {
        self.instance_ns
            .get(instance_id)
            .map(String::as_str)
            .ok_or_else(|| FabricError::UnknownInstance(instance_id.to_string()))
    }

    /// Creates the namespaces and plugs in every attached ENI.
    pub fn build(&mut self, vpc: &Vpc) -> Result<(), FabricError> {
        let mut names = vec![self.fabric_ns.clone()];
        names.extend(self.instance_ns.values().cloned());
        names.extend(self.outside.iter().map(|o| o.netns.clone()));
        if let Some(taken) = names.iter().find(|n| netns::exists(n)) {
            return Err(FabricError::Exists(taken.clone()));
        }
        self.build_fabric(vpc)?;
        self.build_outside(vpc)?;
        for (id, instance) in &vpc.instances {
            let ns = self.instance_netns(id)?.to_string();
            self.create_netns(&ns)?;
            if instance.role == Role::Node {
                netns::sysctl(&ns, "net/ipv4/ip_forward", "1")?;
            }
        }
        self.sync(desired(vpc))
    }

    fn create_netns(&mut self, name: &str) -> Result<(), FabricError> {
        netns::add(name)?;
        self.created.push(name.to_string());
        netns::ip_batch(name, &["link set lo up".to_string()])?;
        Ok(())
    }

    fn build_fabric(&mut self, vpc: &Vpc) -> Result<(), FabricError> {
        let ns = self.fabric_ns.clone();
        self.create_netns(&ns)?;
        netns::sysctl(&ns, "net/ipv4/ip_forward", "1")?;
        netns::sysctl(&ns, "net/ipv4/conf/all/proxy_arp", "1")?;

        // Every subnet's router lives on the fabric's loopback; addresses of the VPC that no
        // ENI holds are dropped silently, as the VPC does.
        let mut commands: Vec<String> = vpc
            .subnets
            .values()
            .map(|s| format!("addr add {}/32 dev lo", s.pool.gateway()))
            .collect();
        commands.push(format!("route add blackhole {}", vpc.cidr));
        netns::ip_batch(&ns, &commands)?;
        self.vlan_datapath = probe_vlan(&ns);
        Ok(())
    }

    /// The namespace of the hosts beyond the VPC and its veth to the fabric. The VPC routes only
    /// these hosts out; they route only the VPC back.
    fn build_outside(&mut self, vpc: &Vpc) -> Result<(), FabricError> {
        let Some(outside) = self.outside.clone() else {
            return Ok(());
        };
        tracing::info!(netns = %outside.netns, addresses = ?outside.addresses, "build outside");
        self.create_netns(&outside.netns)?;
        let mut fabric = vec![format!(
            "link add {OUTSIDE_LINK} type veth peer name eth0 netns {}",
            outside.netns
        )];
        fabric.extend(outside_fabric_commands(&outside.addresses));
        netns::ip_batch(&self.fabric_ns, &fabric)?;
        netns::ip_batch(
            &outside.netns,
            &outside_host_commands(&outside.addresses, vpc.cidr),
        )?;
        Ok(())
    }

    /// Brings the datapath to `desired`: unplugs ENIs that left or moved, plugs new ones,
    /// adjusts the addresses of the rest, and reloads the firewall if its rules changed.
    pub fn sync(&mut self, desired: Datapath) -> Result<(), FabricError> {
        let Datapath { mut ports, policy } = desired;
        if !self.vlan_datapath {
            ports.retain(|_, p| !p.is_vlan());
        }
        let mut gone: Vec<Port> = self
            .ports
            .values()
            .filter(|old| ports.get(&old.eni_id).is_none_or(|new| !new.same_wire(old)))
            .cloned()
            .collect();
        // Branches go before the trunks they ride on, and come after them.
        gone.sort_by_key(|p| !p.is_vlan());
        for port in gone {
            self.unplug(&port)?;
        }
        let mut wanted: Vec<Port> = ports.into_values().collect();
        wanted.sort_by_key(Port::is_vlan);
        for port in wanted {
            match self.ports.get(&port.eni_id).cloned() {
                None => self.plug(&port)?,
                Some(old) if old != port => self.readdress(&old, &port)?,
                Some(_) => continue,
            }
            self.ports.insert(port.eni_id.clone(), port);
        }
        self.apply_firewall(&policy)
    }

    fn apply_firewall(&mut self, policy: &Policy) -> Result<(), FabricError> {
        let ports: Vec<FwPort> = self.ports.values().map(Port::firewall_port).collect();
        let outside = self.outside.as_ref().map(|_| OUTSIDE_LINK);
        let table = firewall::ruleset(&ports, policy, outside);
        if self.firewall.as_ref() == Some(&table) {
            return Ok(());
        }
        netns::iptables_restore(&self.fabric_ns, &table)?;
        self.firewall = Some(table);
        Ok(())
    }

    fn plug(&mut self, port: &Port) -> Result<(), FabricError> {
        let link = port.link();
        let mut fabric = match &port.wire {
            Wire::Veth {
                instance_id,
                device_index,
            } => {
                let inst_ns = self.instance_netns(instance_id)?;
                tracing::info!(eni = %port.eni_id, instance = %instance_id, device_index, mac = %port.mac, "plug eni");
                vec![format!(
                    "link add {link} mtu {ENI_MTU} type veth peer name eth{device_index} address {} mtu {ENI_MTU} netns {inst_ns}",
                    port.mac
                )]
            }
            Wire::Vlan { trunk_eni, vlan_id } => {
                tracing::info!(eni = %port.eni_id, trunk = %trunk_eni, vlan_id, mac = %port.mac, "plug branch");
                let parent = link_name(trunk_eni);
                vec![format!(
                    "link add link {parent} name {link} type vlan id {vlan_id}"
                )]
            }
        };
        fabric.extend(deliver(port));
        if let Err(e) = netns::ip_batch(&self.fabric_ns, &fabric) {
            // Leave no half-plugged link behind, so a later sync can plug it again.
            let _ = netns::ip_batch(&self.fabric_ns, &[format!("link del {link}")]);
            return Err(e.into());
        }
        if let Wire::Veth {
            instance_id,
            device_index: 0,
        } = &port.wire
        {
            self.dhcp(self.instance_netns(instance_id)?, port)?;
        }
        Ok(())
    }

    /// What DHCP does for the primary ENI when an instance boots.
    fn dhcp(&self, inst_ns: &str, port: &Port) -> Result<(), FabricError> {
        let commands = [
            format!("addr add {} brd + dev eth0", port.primary),
            "link set eth0 up".to_string(),
            format!("route replace default via {} dev eth0", port.gateway),
        ];
        netns::ip_batch(inst_ns, &commands)?;
        Ok(())
    }

    fn unplug(&mut self, port: &Port) -> Result<(), FabricError> {
        tracing::info!(eni = %port.eni_id, wire = ?port.wire, "unplug eni");
        netns::ip_batch(&self.fabric_ns, &[format!("link del {}", port.link())])?;
        self.ports.remove(&port.eni_id);
        // The kernel removed the branches' VLAN links together with their trunk's veth.
        self.ports.retain(
            |_, p| !matches!(&p.wire, Wire::Vlan { trunk_eni, .. } if *trunk_eni == port.eni_id),
        );
        Ok(())
    }

    fn readdress(&mut self, old: &Port, new: &Port) -> Result<(), FabricError> {
        let link = new.link();
        let added: Vec<Ipv4Net> = new.extra.difference(&old.extra).copied().collect();
        let removed: Vec<Ipv4Net> = old.extra.difference(&new.extra).copied().collect();
        tracing::info!(eni = %new.eni_id, ?added, ?removed, "readdress eni");
        let mut commands: Vec<String> = removed
            .iter()
            .flat_map(|a| del_address(&link, *a))
            .collect();
        commands.extend(added.iter().flat_map(|a| add_address(new, *a)));
        netns::ip_batch(&self.fabric_ns, &commands)?;
        Ok(())
    }

    /// Removes every link and namespace this fabric created; safe to call twice. Errors are
    /// logged and the rest is still removed.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        let mut ports: Vec<Port> = std::mem::take(&mut self.ports).into_values().collect();
        ports.sort_by_key(|p| !p.is_vlan());
        for port in ports {
            let link = port.link();
            if let Err(e) = netns::ip_batch(&self.fabric_ns, &[format!("link del {link}")]) {
                tracing::warn!(error = %e, %link, "delete eni link");
            }
        }
        for name in self.created.drain(..).rev() {
            if let Err(e) = netns::del(&name) {
                tracing::warn!(error = %e, netns = %name, "delete netns");
            }
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Whether this kernel makes 802.1Q links, tried on a throwaway veth in the fabric. The host
/// kernel of some machines has no 8021q module; branches then live in the API only, which is
/// said once here.
fn probe_vlan(fabric_ns: &str) -> bool {
    let probe = [
        "link add vsprobe0 type veth peer name vsprobe1".to_string(),
        "link add link vsprobe0 name vsprobe0.1 type vlan id 1".to_string(),
    ];
    let made = netns::ip_batch(fabric_ns, &probe);
    let _ = netns::ip_batch(fabric_ns, &["link del vsprobe0".to_string()]);
    if let Err(e) = &made {
        tracing::warn!(error = %e, "this kernel makes no 802.1Q links: trunk associations work in the EC2 API but carry no traffic");
    }
    made.is_ok()
}

/// `ip` commands in the fabric that route every outside host to the outside link. The link
/// keeps the veth's MTU of 1500: jumbo frames do not leave a VPC.
fn outside_fabric_commands(addresses: &[Ipv4Addr]) -> Vec<String> {
    let mut commands = vec![
        format!("link set {OUTSIDE_LINK} up"),
        // The outside ARPs for every VPC address; answer by proxy at once, as for ENIs.
        format!("ntable change name arp_cache dev {OUTSIDE_LINK} proxy_delay 0"),
    ];
    commands.extend(
        addresses
            .iter()
            .map(|a| format!("route replace {a}/32 dev {OUTSIDE_LINK}")),
    );
    commands
}

/// `ip` commands in the outside namespace: each host address on loopback (answered by ARP on
/// eth0 too, as Linux does for any local address) and the VPC on-link behind eth0, where the
/// fabric answers by proxy ARP. No default route: the outside reaches the VPC and nothing else.
fn outside_host_commands(addresses: &[Ipv4Addr], vpc_cidr: Ipv4Net) -> Vec<String> {
    let mut commands: Vec<String> = addresses
        .iter()
        .map(|a| format!("addr add {a}/32 dev lo"))
        .collect();
    commands.push("link set eth0 up".to_string());
    commands.push(format!("route add {vpc_cidr} dev eth0"));
    commands
}

/// `ip` commands that bring a new fabric link up and route the port's addresses to it.
fn deliver(port: &Port) -> Vec<String> {
    let (link, primary) = (port.link(), port.primary.addr());
    let mut commands = vec![
        format!("link set {link} up"),
        // Answer proxy ARP at once instead of after a random delay of up to 0.8 s.
        format!("ntable change name arp_cache dev {link} proxy_delay 0"),
        format!("route replace {primary}/32 dev {link}"),
        format!(
            "neigh replace {primary} lladdr {} dev {link} nud permanent",
            port.mac
        ),
    ];
    commands.extend(port.extra.iter().flat_map(|a| add_address(port, *a)));
    commands
}

/// `ip` commands that deliver `addr` (a secondary /32 or a /28 prefix) to the port's ENI.
fn add_address(port: &Port, addr: Ipv4Net) -> Vec<String> {
    let link = port.link();
    if addr.prefix_len() == 32 {
        vec![
            format!("route replace {addr} dev {link}"),
            format!(
                "neigh replace {} lladdr {} dev {link} nud permanent",
                addr.addr(),
                port.mac
            ),
        ]
    } else {
        // A prefix is delivered like a route through the ENI's primary address, whose
        // neighbour entry already holds the ENI MAC.
        vec![format!(
            "route replace {addr} via {} dev {link} onlink",
            port.primary.addr()
        )]
    }
}

fn del_address(link: &str, addr: Ipv4Net) -> Vec<String> {
    let mut commands = vec![format!("route del {addr} dev {link}")];
    if addr.prefix_len() == 32 {
        commands.push(format!("neigh del {} dev {link}", addr.addr()));
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(extra: &[&str]) -> Port {
        Port {
            eni_id: "eni-0123456789abcdef0".into(),
            wire: Wire::Veth {
                instance_id: "i-1".into(),
                device_index: 1,
            },
            mac: "02:00:00:00:00:01".into(),
            primary: "10.0.0.20/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            extra: extra.iter().map(|a| a.parse().unwrap()).collect(),
            source_dest_check: true,
        }
    }

    #[test]
    fn link_names_fit_ifnamsiz() {
        assert_eq!(link_name("eni-0123456789abcdef0"), "v0123456789abcd");
        assert_eq!(link_name("eni-0123456789abcdef0").len(), 15);
        assert_eq!(vlan_link_name("eni-0123456789abcdef0"), "b0123456789abcd");
    }

    #[test]
    fn branches_ride_on_attached_trunks_only() {
        let scenario: crate::sim::scenario::Scenario = serde_json::from_value(serde_json::json!({
            "region": "us-west-2",
            "vpc": {"id": "vpc-1", "cidr": "10.0.0.0/16"},
            "subnets": [{"id": "subnet-a", "cidr": "10.0.0.0/24", "az": "us-west-2a"}],
            "instances": [{"id": "i-1", "type": "m5.large", "subnet": "subnet-a", "role": "node"}]
        }))
        .unwrap();
        let mut vpc = Vpc::from_scenario(&scenario).unwrap();
        let create = |vpc: &mut Vpc, interface_type| {
            let req = crate::sim::ec2::ops::CreateEni {
                subnet_id: "subnet-a".into(),
                interface_type,
                ..Default::default()
            };
            vpc.create_eni(req).unwrap().id.clone()
        };
        let trunk = create(&mut vpc, crate::sim::ec2::model::InterfaceType::Trunk);
        let branch = create(&mut vpc, crate::sim::ec2::model::InterfaceType::Interface);
        let attachment = vpc.attach(&trunk, "i-1", 1, 0).unwrap();
        let req = crate::sim::ec2::trunk::Associate {
            branch: branch.clone(),
            trunk: trunk.clone(),
            vlan_id: Some(5),
            ..Default::default()
        };
        vpc.associate_trunk(&req).unwrap();
        let ports = desired(&vpc).ports;
        let wire = Wire::Vlan {
            trunk_eni: trunk.clone(),
            vlan_id: 5,
        };
        assert_eq!(ports[&branch].wire, wire);
        assert_eq!(ports[&branch].link(), vlan_link_name(&branch));
        assert!(ports[&branch].primary.addr() == vpc.eni(&branch).unwrap().primary_ip());

        vpc.detach(&attachment, false).unwrap();
        let ports = desired(&vpc).ports;
        assert!(!ports.contains_key(&branch) && !ports.contains_key(&trunk));
    }

    #[test]
    fn address_commands_route_to_the_eni() {
        let p = port(&[]);
        let host = add_address(&p, "10.0.0.30/32".parse().unwrap());
        assert_eq!(host[0], "route replace 10.0.0.30/32 dev v0123456789abcd");
        assert!(host[1].contains("lladdr 02:00:00:00:00:01") && host[1].contains("permanent"));
        let prefix = add_address(&p, "10.0.0.48/28".parse().unwrap());
        assert_eq!(
            prefix,
            ["route replace 10.0.0.48/28 via 10.0.0.20 dev v0123456789abcd onlink"]
        );
        assert_eq!(del_address("vx", "10.0.0.48/28".parse().unwrap()).len(), 1);
    }

    #[test]
    fn outside_hosts_are_routed_to_their_own_link() {
        let hosts = [
            "203.0.113.10".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        ];
        let fabric = outside_fabric_commands(&hosts);
        assert!(fabric.contains(&"ntable change name arp_cache dev xoutside proxy_delay 0".into()));
        assert!(fabric.contains(&"route replace 198.51.100.7/32 dev xoutside".into()));
        let host = outside_host_commands(&hosts, "10.0.0.0/16".parse().unwrap());
        assert_eq!(
            host,
            [
                "addr add 203.0.113.10/32 dev lo",
                "addr add 198.51.100.7/32 dev lo",
                "link set eth0 up",
                "route add 10.0.0.0/16 dev eth0",
            ]
        );
        // No ENI link name can be the outside link.
        assert!(!OUTSIDE_LINK.starts_with('v') && !OUTSIDE_LINK.starts_with('b'));
    }

    #[test]
    fn moving_an_eni_is_a_new_wire() {
        let a = port(&["10.0.0.30/32"]);
        let mut b = port(&[]);
        assert!(a.same_wire(&b));
        b.wire = Wire::Veth {
            instance_id: "i-1".into(),
            device_index: 2,
        };
        assert!(!a.same_wire(&b));
    }
}
