//! The scenario file: one VPC with its subnets, security groups and instances.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::ec2::instance_types;
use super::secgroup::{Match, RuleError};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("read scenario {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("parse scenario {0}: {1}")]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    pub region: String,
    pub vpc: VpcSpec,
    pub subnets: Vec<SubnetSpec>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroupSpec>,
    pub instances: Vec<InstanceSpec>,
    /// Seeds the id generator so ENI ids and MACs repeat from run to run.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Hosts beyond the VPC, reached through a virtual private gateway (a site-to-site VPN):
    /// the VPC routes each of these addresses out of the VPC and, as a VPN does, leaves the
    /// source address of what it carries unchanged, so a host here sees the address a pod's
    /// traffic really leaves the node with. Security groups and the source/destination check
    /// apply as for any other peer. IPv4 host addresses outside the VPC CIDR, e.g.
    /// `"outside": ["203.0.113.10"]`; empty (the default) means no network outside.
    #[serde(default)]
    pub outside: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VpcSpec {
    pub id: String,
    pub cidr: Ipv4Net,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetSpec {
    pub id: String,
    pub cidr: Ipv4Net,
    pub az: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A security group. Without an `ingress` list nothing comes in; without an `egress` list the
/// group has EC2's default egress rule (everything out), while `"egress": []` lets nothing
/// new out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityGroupSpec {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub ingress: Vec<SgRule>,
    #[serde(default)]
    pub egress: Option<Vec<SgRule>>,
}

impl SecurityGroupSpec {
    pub fn egress_rules(&self) -> Vec<SgRule> {
        self.egress
            .clone()
            .unwrap_or_else(|| vec![SgRule::all_traffic()])
    }
}

/// One security-group rule: traffic of `protocol` ("tcp", "udp", "icmp" or "-1" for all) on
/// ports `fromPort..=toPort` (for ICMP: type and code; absent means all), from (ingress) or to
/// (egress) `cidrs` or the addresses of every ENI in one of `groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SgRule {
    pub protocol: String,
    #[serde(default)]
    pub from_port: Option<u16>,
    #[serde(default)]
    pub to_port: Option<u16>,
    #[serde(default)]
    pub cidrs: Vec<Ipv4Net>,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl SgRule {
    /// EC2's default egress rule: all traffic to 0.0.0.0/0.
    pub fn all_traffic() -> Self {
        Self {
            protocol: "-1".into(),
            from_port: None,
            to_port: None,
            cidrs: vec![Ipv4Net::default()],
            groups: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A Kubernetes node: ipamd and pods live in its namespace; it forwards packets.
    Node,
    /// Any other machine in the VPC, for example a database the pods talk to.
    Host,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    pub id: String,
    #[serde(rename = "type")]
    pub instance_type: String,
    pub subnet: String,
    #[serde(default)]
    pub security_groups: Vec<String>,
    pub role: Role,
    #[serde(default)]
    pub private_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read(path).map_err(|e| ScenarioError::Read(path.to_path_buf(), e))?;
        let scenario: Scenario = serde_json::from_slice(&text)
            .map_err(|e| ScenarioError::Parse(path.to_path_buf(), e))?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.region.is_empty() {
            return invalid("region is empty".into());
        }
        self.validate_subnets()?;
        unique("security group", self.security_groups.iter().map(|g| &g.id))?;
        self.security_groups
            .iter()
            .try_for_each(|g| self.validate_group(g))?;
        unique("instance", self.instances.iter().map(|i| &i.id))?;
        self.instances
            .iter()
            .try_for_each(|i| self.validate_instance(i))?;
        self.validate_outside()
    }

    fn validate_outside(&self) -> Result<(), ScenarioError> {
        let mut seen = BTreeSet::new();
        for addr in &self.outside {
            if self.vpc.cidr.contains(addr) {
                return invalid(format!(
                    "outside address {addr} is inside vpc {}",
                    self.vpc.cidr
                ));
            }
            // Each address becomes a /32 route in the fabric and an address in the outside
            // namespace: only a unicast host address makes sense there.
            let special = addr.is_unspecified()
                || addr.is_loopback()
                || addr.is_link_local()
                || addr.is_multicast()
                || addr.is_broadcast();
            if special {
                return invalid(format!(
                    "outside address {addr} is not a unicast host address"
                ));
            }
            if !seen.insert(addr) {
                return invalid(format!("outside address {addr} appears twice"));
            }
        }
        Ok(())
    }

    fn validate_subnets(&self) -> Result<(), ScenarioError> {
        unique("subnet", self.subnets.iter().map(|s| &s.id))?;
        for (n, subnet) in self.subnets.iter().enumerate() {
            let len = subnet.cidr.prefix_len();
            if !(16..=28).contains(&len) {
                return invalid(format!(
                    "subnet {} has /{len}; EC2 allows /16 to /28",
                    subnet.id
                ));
            }
            if !self.vpc.cidr.contains(&subnet.cidr) {
                return invalid(format!(
                    "subnet {} is outside vpc {}",
                    subnet.id, self.vpc.cidr
                ));
            }
            if !subnet.az.starts_with(&self.region) {
                return invalid(format!(
                    "subnet {} has az {} outside region {}",
                    subnet.id, subnet.az, self.region
                ));
            }
            if let Some(other) = self.subnets[..n].iter().find(|o| {
                o.cidr.contains(&subnet.cidr.network()) || subnet.cidr.contains(&o.cidr.network())
            }) {
                return invalid(format!("subnets {} and {} overlap", other.id, subnet.id));
            }
        }
        Ok(())
    }

    fn validate_group(&self, group: &SecurityGroupSpec) -> Result<(), ScenarioError> {
        let egress = group.egress.iter().flatten();
        for (direction, rule) in group
            .ingress
            .iter()
            .map(|r| ("ingress", r))
            .chain(egress.map(|r| ("egress", r)))
        {
            let bad = |why: String| invalid(format!("group {} {direction} rule: {why}", group.id));
            if let Err(e) = Match::parse(rule) {
                return bad(e.to_string());
            }
            if rule.cidrs.is_empty() && rule.groups.is_empty() {
                return bad(RuleError::NoPeer.to_string());
            }
            if let Some(g) = rule
                .groups
                .iter()
                .find(|g| !self.security_groups.iter().any(|s| &&s.id == g))
            {
                return bad(format!("unknown security group {g}"));
            }
        }
        Ok(())
    }

    fn validate_instance(&self, instance: &InstanceSpec) -> Result<(), ScenarioError> {
        let id = &instance.id;
        // The id names the instance's netns, a file under /var/run/netns.
        let safe = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if id.is_empty() || id.len() > 40 || !id.chars().all(safe) {
            return invalid(format!(
                "instance id {id:?} must be 1-40 characters of [A-Za-z0-9_-]"
            ));
        }
        if instance_types::lookup(&instance.instance_type).is_none() {
            return invalid(format!(
                "instance {id} has unknown type {}",
                instance.instance_type
            ));
        }
        let Some(subnet) = self.subnets.iter().find(|s| s.id == instance.subnet) else {
            return invalid(format!(
                "instance {id} names unknown subnet {}",
                instance.subnet
            ));
        };
        if let Some(sg) = instance
            .security_groups
            .iter()
            .find(|sg| !self.security_groups.iter().any(|g| &&g.id == sg))
        {
            return invalid(format!("instance {id} names unknown security group {sg}"));
        }
        match instance.private_ip {
            Some(ip) if !subnet.cidr.contains(&ip) => invalid(format!(
                "instance {id} address {ip} is outside subnet {}",
                subnet.id
            )),
            _ => Ok(()),
        }
    }

    pub fn subnet(&self, id: &str) -> Option<&SubnetSpec> {
        self.subnets.iter().find(|s| s.id == id)
    }
}

fn invalid<T>(message: String) -> Result<T, ScenarioError> {
    Err(ScenarioError::Invalid(message))
}

fn unique<'a>(kind: &str, ids: impl Iterator<Item = &'a String>) -> Result<(), ScenarioError> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id) {
            return invalid(format!("{kind} id {id} appears twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "region": "us-west-2",
            "vpc": {"id": "vpc-1", "cidr": "10.0.0.0/16"},
            "subnets": [{"id": "subnet-a", "cidr": "10.0.0.0/24", "az": "us-west-2a"}],
            "securityGroups": [{"id": "sg-1", "name": "nodes",
                "ingress": [{"protocol": "-1", "cidrs": ["10.0.0.0/16"]}]}],
            "instances": [{"id": "i-1", "type": "m5.large", "subnet": "subnet-a",
                "securityGroups": ["sg-1"], "role": "node"}]
        })
    }

    fn check(v: serde_json::Value) -> Result<(), ScenarioError> {
        serde_json::from_value::<Scenario>(v).unwrap().validate()
    }

    #[test]
    fn accepts_a_minimal_scenario() {
        check(base()).unwrap();
    }

    #[test]
    fn rejects_inconsistent_scenarios() {
        let mut v = base();
        v["instances"][0]["type"] = "x9.huge".into();
        assert!(check(v)
            .unwrap_err()
            .to_string()
            .contains("unknown type x9.huge"));

        let mut v = base();
        v["subnets"][0]["cidr"] = "10.1.0.0/24".into();
        assert!(check(v).unwrap_err().to_string().contains("outside vpc"));

        let mut v = base();
        v["instances"][0]["privateIp"] = "10.0.1.5".into();
        assert!(check(v).unwrap_err().to_string().contains("outside subnet"));

        let mut v = base();
        v["instances"][0]["id"] = "../../etc".into();
        assert!(check(v).unwrap_err().to_string().contains("must be"));

        let mut v = base();
        v["instances"][0]["securityGroups"] = serde_json::json!(["sg-9"]);
        assert!(check(v).unwrap_err().to_string().contains("sg-9"));
    }

    #[test]
    fn rejects_bad_rules_and_fills_default_egress() {
        let mut v = base();
        v["securityGroups"][0]["ingress"][0]["protocol"] = "gre".into();
        assert!(check(v).unwrap_err().to_string().contains("protocol"));

        let mut v = base();
        v["securityGroups"][0]["ingress"][0]["groups"] = serde_json::json!(["sg-9"]);
        assert!(check(v).unwrap_err().to_string().contains("sg-9"));

        let mut v = base();
        v["securityGroups"][0]["egress"] = serde_json::json!([{"protocol": "tcp"}]);
        assert!(check(v).unwrap_err().to_string().contains("no cidrs"));

        let scenario: Scenario = serde_json::from_value(base()).unwrap();
        assert_eq!(
            scenario.security_groups[0].egress_rules(),
            [SgRule::all_traffic()]
        );
        let mut v = base();
        v["securityGroups"][0]["egress"] = serde_json::json!([]);
        let scenario: Scenario = serde_json::from_value(v).unwrap();
        assert!(scenario.security_groups[0].egress_rules().is_empty());
    }

    #[test]
    fn outside_hosts_are_unique_and_beyond_the_vpc() {
        let scenario: Scenario = serde_json::from_value(base()).unwrap();
        assert!(scenario.outside.is_empty());

        let mut v = base();
        v["outside"] = serde_json::json!(["203.0.113.10", "198.51.100.7"]);
        check(v.clone()).unwrap();
        let scenario: Scenario = serde_json::from_value(v).unwrap();
        assert_eq!(scenario.outside[1], Ipv4Addr::new(198, 51, 100, 7));

        let refused = |outside: serde_json::Value| {
            let mut v = base();
            v["outside"] = outside;
            check(v).unwrap_err().to_string()
        };
        assert_eq!(
            refused(serde_json::json!(["10.0.200.1"])),
            "invalid scenario: outside address 10.0.200.1 is inside vpc 10.0.0.0/16"
        );
        assert_eq!(
            refused(serde_json::json!(["203.0.113.10", "203.0.113.10"])),
            "invalid scenario: outside address 203.0.113.10 appears twice"
        );
        assert!(refused(serde_json::json!(["127.0.0.1"])).contains("not a unicast host"));
        assert!(refused(serde_json::json!(["224.0.0.5"])).contains("not a unicast host"));

        let mut v = base();
        v["outside"] = serde_json::json!(["203.0.113.0/24"]);
        assert!(serde_json::from_value::<Scenario>(v).is_err());
    }

    #[test]
    fn rejects_unknown_fields() {
        let mut v = base();
        v["instances"][0]["subnetId"] = "subnet-a".into();
        assert!(serde_json::from_value::<Scenario>(v).is_err());
    }
}
