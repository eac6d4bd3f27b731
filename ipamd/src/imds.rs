//! Instance metadata (IMDSv2) reads ipamd needs: who this instance is and its primary ENI.
//!
//! The endpoint comes from the SDK's own setting, `AWS_EC2_METADATA_SERVICE_ENDPOINT`.

use std::sync::Arc;
use std::time::Instant;

use aws_config::imds::client::error::ImdsError as SdkImdsError;
use aws_config::imds::Client;
use ipnet::Ipv4Net;
use thiserror::Error;

use crate::metrics::Metrics;

const ROOT: &str = "/latest/meta-data/";
/// Label aws-node uses for IMDS calls in `awscni_aws_api_latency_ms`.
const METRIC_API: &str = "GetMetadata";

#[derive(Debug, Error)]
pub enum ImdsError {
    #[error("imds {path}: {reason}")]
    Get { path: String, reason: String },
    #[error("imds {path}: {value:?} is not {what}")]
    Parse {
        path: String,
        value: String,
        what: &'static str,
    },
}

/// The instance and its primary ENI as IMDS describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    pub instance_type: String,
    pub region: String,
    pub availability_zone: String,
    pub primary_mac: String,
    pub primary_eni_id: String,
    pub primary_ip: std::net::Ipv4Addr,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub vpc_cidrs: Vec<Ipv4Net>,
    pub security_groups: Vec<String>,
}

#[derive(Clone)]
pub struct Imds {
    client: Client,
    metrics: Arc<Metrics>,
}

impl Imds {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Imds {
            client: Client::builder().build(),
            metrics,
        }
    }

    /// One metadata value, trimmed, timed into the metrics.
    pub async fn get(&self, path: &str) -> Result<String, ImdsError> {
        let full = format!("{ROOT}{path}");
        let started = Instant::now();
        let result = self.client.get(full).await;
        let (error, status) = match &result {
            Ok(_) => (None, Some(200)),
            Err(SdkImdsError::ErrorResponse(e)) => {
                (Some("ErrorResponse"), Some(e.response().status().as_u16()))
            }
            Err(_) => (Some("RequestError"), None),
        };
        self.metrics
            .aws_call(METRIC_API, started.elapsed(), error, status);
        match result {
            Ok(value) => Ok(value.as_ref().trim().to_string()),
            Err(e) => Err(ImdsError::Get {
                path: path.into(),
                reason: crate::error_chain(&e),
            }),
        }
    }

    async fn get_parsed<T: std::str::FromStr>(
        &self,
        path: &str,
        what: &'static str,
    ) -> Result<T, ImdsError> {
        let value = self.get(path).await?;
        value.parse().map_err(|_| ImdsError::Parse {
            path: path.into(),
            value,
            what,
        })
    }

    pub async fn identity(&self) -> Result<Identity, ImdsError> {
        let mac = self.get("mac").await?;
        let eni = |field: &str| format!("network/interfaces/macs/{mac}/{field}");
        let availability_zone = self.get("placement/availability-zone").await?;
        let region = match self.get("placement/region").await {
            Ok(region) => region,
            // Older metadata versions lack placement/region; the zone is region + one letter.
            Err(_) => availability_zone
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .into(),
        };
        Ok(Identity {
            instance_id: self.get("instance-id").await?,
            instance_type: self.get("instance-type").await?,
            region,
            availability_zone,
            primary_eni_id: self.get(&eni("interface-id")).await?,
            primary_ip: self.get_parsed("local-ipv4", "an IPv4 address").await?,
            subnet_id: self.get(&eni("subnet-id")).await?,
            subnet_cidr: self.subnet_cidr(&mac).await?,
            vpc_cidrs: self.vpc_cidrs(&mac).await?,
            security_groups: lines(&self.get(&eni("security-group-ids")).await?),
            primary_mac: mac,
        })
    }

    /// Every IPv4 CIDR of the VPC of the ENI with this MAC, the primary first.
    pub async fn vpc_cidrs(&self, mac: &str) -> Result<Vec<Ipv4Net>, ImdsError> {
        let path = format!("network/interfaces/macs/{mac}/vpc-ipv4-cidr-blocks");
        self.cidr_list(&path).await
    }

    /// The IPv4 CIDR of the subnet of the ENI with this MAC.
    pub async fn subnet_cidr(&self, mac: &str) -> Result<Ipv4Net, ImdsError> {
        let path = format!("network/interfaces/macs/{mac}/subnet-ipv4-cidr-block");
        self.get_parsed(&path, "an IPv4 CIDR").await
    }

    async fn cidr_list(&self, path: &str) -> Result<Vec<Ipv4Net>, ImdsError> {
        let value = self.get(path).await?;
        lines(&value)
            .into_iter()
            .map(|line| {
                line.parse().map_err(|_| ImdsError::Parse {
                    path: path.into(),
                    value: line,
                    what: "an IPv4 CIDR",
                })
            })
            .collect()
    }
}

/// IMDS lists are newline-separated (some entries are space-separated).
fn lines(value: &str) -> Vec<String> {
    value.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_any_whitespace() {
        assert_eq!(lines("sg-1\nsg-2 sg-3\n"), vec!["sg-1", "sg-2", "sg-3"]);
        assert!(lines("").is_empty());
    }
}
