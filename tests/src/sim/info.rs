//! sim.json: what a running simulator tells its users (endpoints, namespaces, instances).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ec2::Vpc;
use super::fabric::{Fabric, FabricError};
use super::scenario::Role;

pub const IMDS_PORT: u16 = 1338;
pub const INSTANCE_EC2_PORT: u16 = 8773;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimInfo {
    pub ec2_endpoint: String,
    pub fabric_netns: String,
    pub region: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub pid: u32,
    pub instances: Vec<InstanceInfo>,
    /// The hosts beyond the VPC, when the scenario has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside: Option<OutsideInfo>,
}

/// The namespace that holds the scenario's outside hosts, reached through the VPC's virtual
/// private gateway without address translation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutsideInfo {
    pub netns: String,
    pub addresses: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    pub id: String,
    #[serde(rename = "type")]
    pub instance_type: String,
    pub role: Role,
    pub netns: String,
    pub imds_endpoint: String,
    pub ec2_endpoint: String,
    pub primary_ip: String,
    pub primary_mac: String,
    pub primary_eni_id: String,
    pub subnet_id: String,
    pub subnet_cidr: String,
    pub availability_zone: String,
    pub gateway: String,
}

impl SimInfo {
    pub fn new(vpc: &Vpc, fabric: &Fabric, ec2_port: u16) -> Result<Self, FabricError> {
        let mut instances = Vec::new();
        for instance in vpc.instances.values() {
            let Some(eni) = vpc.primary_eni(&instance.id) else {
                continue;
            };
            let pool = &vpc.subnets[&eni.subnet_id].pool;
            instances.push(InstanceInfo {
                id: instance.id.clone(),
                instance_type: instance.itype.name.to_string(),
                role: instance.role,
                netns: fabric.instance_netns(&instance.id)?.to_string(),
                imds_endpoint: format!("http://127.0.0.1:{IMDS_PORT}"),
                ec2_endpoint: format!("http://127.0.0.1:{INSTANCE_EC2_PORT}"),
                primary_ip: eni.primary_ip().to_string(),
                primary_mac: eni.mac.clone(),
                primary_eni_id: eni.id.clone(),
                subnet_id: eni.subnet_id.clone(),
                subnet_cidr: pool.cidr().to_string(),
                availability_zone: instance.az.clone(),
                gateway: pool.gateway().to_string(),
            });
        }
        Ok(Self {
            ec2_endpoint: format!("http://127.0.0.1:{ec2_port}"),
            fabric_netns: fabric.fabric_netns().to_string(),
            region: vpc.region.clone(),
            vpc_id: vpc.id.clone(),
            vpc_cidr: vpc.cidr.to_string(),
            pid: std::process::id(),
            instances,
            outside: fabric.outside().map(|o| OutsideInfo {
                netns: o.netns.clone(),
                addresses: o.addresses.clone(),
            }),
        })
    }

    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("sim.json")
    }

    /// Writes DIR/sim.json through a temporary file and a rename, so readers never see half.
    pub fn write(&self, run_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(run_dir)?;
        let tmp = run_dir.join(".sim.json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(serde_json::to_string(self)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, Self::path(run_dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(outside: Option<OutsideInfo>) -> SimInfo {
        SimInfo {
            ec2_endpoint: "http://127.0.0.1:1".into(),
            fabric_netns: "p-fabric".into(),
            region: "us-west-2".into(),
            vpc_id: "vpc-1".into(),
            vpc_cidr: "10.0.0.0/16".into(),
            pid: 1,
            instances: Vec::new(),
            outside,
        }
    }

    #[test]
    fn outside_is_written_only_when_there_is_one() {
        let outside = OutsideInfo {
            netns: "p-outside".into(),
            addresses: vec![Ipv4Addr::new(203, 0, 113, 10)],
        };
        let with = serde_json::to_value(info(Some(outside.clone()))).unwrap();
        assert_eq!(
            with["outside"],
            serde_json::json!({"netns": "p-outside", "addresses": ["203.0.113.10"]})
        );
        let back: SimInfo = serde_json::from_value(with).unwrap();
        assert_eq!(back.outside, Some(outside));

        let without = serde_json::to_value(info(None)).unwrap();
        assert!(without.get("outside").is_none());
        let back: SimInfo = serde_json::from_value(without).unwrap();
        assert_eq!(back.outside, None);
    }
}
