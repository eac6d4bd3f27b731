//! The hypervisor and the VPC fabric. Each instance is a network namespace; each attached ENI
//! is a veth pair whose instance end is `eth<device index>` with the ENI's MAC and whose other
//! end sits in the fabric namespace. The fabric routes between subnets, answers ARP for every
//! subnet's router (.1, on its loopback) and, by proxy ARP, for every address it can route
//! elsewhere. It delivers a packet to an ENI only for that ENI's EC2 addresses (a /32 or /28
//! route per address with a permanent neighbour entry) and, like EC2's source/destination
//! check, forwards a packet from an ENI only if its source is one of that ENI's addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::ec2::Vpc;
use super::netns::{self, NetnsError};
use super::scenario::Role;

/// MTU of every ENI on current instance types (jumbo frames inside a VPC).
pub const ENI_MTU: u32 = 9001;
const NFT_TABLE: &str = "ip vpcsim";
const NFT_SET: &str = "enisrc";

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

/// One attached ENI as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub eni_id: String,
    pub instance_id: String,
    pub device_index: u32,
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
        link_name(&self.eni_id)
    }

    fn same_wire(&self, other: &Port) -> bool {
        (
            &self.instance_id,
            self.device_index,
            &self.mac,
            self.primary,
        ) == (
            &other.instance_id,
            other.device_index,
            &other.mac,
            other.primary,
        )
    }
}

/// The fabric end of an ENI's veth: `v` and 14 hex digits of the ENI id (IFNAMSIZ is 16).
pub fn link_name(eni_id: &str) -> String {
    let hex: String = eni_id.trim_start_matches("eni-").chars().take(14).collect();
    format!("v{hex}")
}

/// The ports the VPC model says should exist now.
pub fn desired_ports(vpc: &Vpc) -> BTreeMap<String, Port> {
    let mut ports = BTreeMap::new();
    for eni in vpc.enis.values() {
        let (Some(att), Some(subnet)) = (&eni.attachment, vpc.subnets.get(&eni.subnet_id)) else {
            continue;
        };
        let prefix_len = subnet.pool.cidr().prefix_len();
        let primary = Ipv4Net::new(eni.primary_ip(), prefix_len).expect("subnet prefix length");
        let secondaries = eni.private_ips[1..].iter().map(|ip| Ipv4Net::from(*ip));
        let port = Port {
            eni_id: eni.id.clone(),
            instance_id: att.instance_id.clone(),
            device_index: att.device_index,
            mac: eni.mac.clone(),
            primary,
            gateway: subnet.pool.gateway(),
            extra: secondaries.chain(eni.prefixes.iter().copied()).collect(),
            source_dest_check: eni.source_dest_check,
        };
        ports.insert(eni.id.clone(), port);
    }
    ports
}

#[derive(Debug)]
pub struct Fabric {
    fabric_ns: String,
    instance_ns: BTreeMap<String, String>,
    created: Vec<String>,
    ports: BTreeMap<String, Port>,
    torn_down: bool,
}

impl Fabric {
    pub fn new(prefix: &str, vpc: &Vpc) -> Self {
        let instance_ns = vpc
            .instances
            .keys()
            .map(|id| (id.clone(), format!("{prefix}-{id}")))
            .collect();
        Self {
            fabric_ns: format!("{prefix}-fabric"),
            instance_ns,
            created: Vec::new(),
            ports: BTreeMap::new(),
            torn_down: false,
        }
    }

    pub fn fabric_netns(&self) -> &str {
        &self.fabric_ns
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
        if let Some(taken) = names.iter().find(|n| netns::exists(n)) {
            return Err(FabricError::Exists(taken.clone()));
        }
        self.build_fabric(vpc)?;
        for (id, instance) in &vpc.instances {
            let ns = self.instance_netns(id)?.to_string();
            self.create_netns(&ns)?;
            if instance.role == Role::Node {
                netns::sysctl(&ns, "net/ipv4/ip_forward", "1")?;
            }
        }
        self.sync(desired_ports(vpc))
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

        // Security-group rules would become further chains here, matched per ENI link.
        let ruleset = format!(
            "table {NFT_TABLE} {{\n\
               set {NFT_SET} {{ type ifname . ipv4_addr; flags interval; }}\n\
               chain forward {{\n\
                 type filter hook forward priority filter; policy drop;\n\
                 iifname . ip saddr @{NFT_SET} accept\n\
                 counter comment \"source/destination check drops\"\n\
               }}\n\
             }}\n"
        );
        netns::nft(&ns, &ruleset)?;
        Ok(())
    }

    /// Brings the datapath to `desired`: unplugs ENIs that left or moved, plugs new ones and
    /// adjusts the addresses of the rest.
    pub fn sync(&mut self, desired: BTreeMap<String, Port>) -> Result<(), FabricError> {
        let gone: Vec<Port> = self
            .ports
            .values()
            .filter(|old| {
                desired
                    .get(&old.eni_id)
                    .is_none_or(|new| !new.same_wire(old))
            })
            .cloned()
            .collect();
        for port in gone {
            self.unplug(&port)?;
        }
        for (id, port) in desired {
            match self.ports.get(&id).cloned() {
                None => self.plug(&port)?,
                Some(old) if old != port => self.readdress(&old, &port)?,
                Some(_) => continue,
            }
            self.ports.insert(id, port);
        }
        Ok(())
    }

    fn plug(&mut self, port: &Port) -> Result<(), FabricError> {
        let inst_ns = self.instance_netns(&port.instance_id)?.to_string();
        let link = port.link();
        let ifname = format!("eth{}", port.device_index);
        let primary = port.primary.addr();
        tracing::info!(eni = %port.eni_id, instance = %port.instance_id, %ifname, mac = %port.mac, "plug eni");
        let mut fabric = vec![
            format!(
                "link add {link} mtu {ENI_MTU} type veth peer name {ifname} address {} mtu {ENI_MTU} netns {inst_ns}",
                port.mac
            ),
            format!("link set {link} up"),
            // Answer proxy ARP at once instead of after a random delay of up to 0.8 s.
            format!("ntable change name arp_cache dev {link} proxy_delay 0"),
            format!("route replace {primary}/32 dev {link}"),
            format!("neigh replace {primary} lladdr {} dev {link} nud permanent", port.mac),
        ];
        fabric.extend(port.extra.iter().flat_map(|a| add_address(port, *a)));
        if let Err(e) = netns::ip_batch(&self.fabric_ns, &fabric) {
            // Leave no half-plugged link behind, so a later sync can plug it again.
            let _ = netns::ip_batch(&self.fabric_ns, &[format!("link del {link}")]);
            return Err(e.into());
        }
        let mut sources: Vec<Ipv4Net> = vec![Ipv4Net::from(primary)];
        sources.extend(&port.extra);
        if !port.source_dest_check {
            sources.push(Ipv4Net::default());
        }
        self.nft_elements("add", &link, &sources)?;
        if port.device_index == 0 {
            self.dhcp(&inst_ns, port)?;
        }
        Ok(())
    }

    /// What DHCP does for the primary ENI when an instance boots.
    fn dhcp(&self, inst_ns: &str, port: &Port) -> Result<(), FabricError> {
        let ifname = format!("eth{}", port.device_index);
        let commands = [
            format!("addr add {} brd + dev {ifname}", port.primary),
            format!("link set {ifname} up"),
            format!("route replace default via {} dev {ifname}", port.gateway),
        ];
        netns::ip_batch(inst_ns, &commands)?;
        Ok(())
    }

    fn unplug(&mut self, port: &Port) -> Result<(), FabricError> {
        tracing::info!(eni = %port.eni_id, instance = %port.instance_id, "unplug eni");
        let link = port.link();
        netns::ip_batch(&self.fabric_ns, &[format!("link del {link}")])?;
        let mut sources: Vec<Ipv4Net> = vec![Ipv4Net::from(port.primary.addr())];
        sources.extend(&port.extra);
        if !port.source_dest_check {
            sources.push(Ipv4Net::default());
        }
        self.nft_elements("delete", &link, &sources)?;
        self.ports.remove(&port.eni_id);
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
        self.nft_elements("delete", &link, &removed)?;
        self.nft_elements("add", &link, &added)?;
        match (old.source_dest_check, new.source_dest_check) {
            (true, false) => self.nft_elements("add", &link, &[Ipv4Net::default()])?,
            (false, true) => self.nft_elements("delete", &link, &[Ipv4Net::default()])?,
            _ => {}
        }
        Ok(())
    }

    fn nft_elements(&self, verb: &str, link: &str, nets: &[Ipv4Net]) -> Result<(), FabricError> {
        if nets.is_empty() {
            return Ok(());
        }
        let elements: Vec<String> = nets.iter().map(|n| format!("\"{link}\" . {n}")).collect();
        let script = format!(
            "{verb} element {NFT_TABLE} {NFT_SET} {{ {} }}\n",
            elements.join(", ")
        );
        netns::nft(&self.fabric_ns, &script)?;
        Ok(())
    }

    /// Removes every link and namespace this fabric created; safe to call twice. Errors are
    /// logged and the rest is still removed.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for port in std::mem::take(&mut self.ports).values() {
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
            instance_id: "i-1".into(),
            device_index: 1,
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
    fn moving_an_eni_is_a_new_wire() {
        let a = port(&["10.0.0.30/32"]);
        let mut b = port(&[]);
        assert!(a.same_wire(&b));
        b.device_index = 2;
        assert!(!a.same_wire(&b));
    }
}
