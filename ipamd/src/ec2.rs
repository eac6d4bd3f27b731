//! The EC2 calls ipamd makes, through aws-sdk-ec2, each one retried with exponential backoff
//! and jitter on throttling and server errors, logged and counted for the metrics.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Region};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, InstanceType, NetworkInterface, NetworkInterfaceAttachmentChanges,
    NetworkInterfaceCreationType, ResourceType, Tag, TagSpecification,
};
use aws_sdk_ec2::Client;
use ipnet::Ipv4Net;
use rand::Rng;
use thiserror::Error;

use crate::metrics::Metrics;

pub const PRIVATE_IP_LIMIT_EXCEEDED: &str = "PrivateIpAddressLimitExceeded";
pub const INSUFFICIENT_FREE_ADDRESSES: &str = "InsufficientFreeAddressesInSubnet";
pub const INSUFFICIENT_CIDR_BLOCKS: &str = "InsufficientCidrBlocks";
pub const ENI_NOT_FOUND: &str = "InvalidNetworkInterfaceID.NotFound";
pub const ASSOCIATION_NOT_FOUND: &str = "InvalidAssociationID.NotFound";
/// Codes EC2 uses when the account's request rate is exceeded.
const THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
];
/// Codes for transient server-side failures, sometimes sent with a 4xx-less body.
const SERVER_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
];

/// Tag keys ipamd puts on the ENIs it creates, as aws-node does.
pub const TAG_INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
pub const TAG_CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
pub const TAG_CLUSTER: &str = "cluster.k8s.amazonaws.com/name";
pub const TAG_OWNER: &str = "eks:eni:owner";
pub const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";
/// aws-node caps device indexes at 0–99 because VLAN ids + 100 number the branch tables.
pub const MAX_DEVICE_INDEX: u32 = 99;

#[derive(Debug, Error)]
pub enum Ec2Error {
    #[error("ec2 {action}: {code}: {message}")]
    Api {
        action: &'static str,
        code: String,
        message: String,
        status: Option<u16>,
    },
    #[error("ec2 {action}: {reason}")]
    Transport {
        action: &'static str,
        reason: String,
    },
    #[error("ec2 {action}: response lacks {what}")]
    Incomplete {
        action: &'static str,
        what: &'static str,
    },
    #[error("ec2 {action}: {what} not found")]
    NotFound { action: &'static str, what: String },
    #[error("no free device index on instance {0}")]
    NoDeviceIndex(String),
}

impl Ec2Error {
    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Throttling, server errors and lost connections are worth another try.
    fn retryable(&self) -> bool {
        match self {
            Ec2Error::Api { code, status, .. } => {
                THROTTLE_CODES.contains(&code.as_str())
                    || SERVER_CODES.contains(&code.as_str())
                    || status.is_some_and(|s| s >= 500)
            }
            Ec2Error::Transport { .. } => true,
            _ => false,
        }
    }

    fn from_sdk<E: ProvideErrorMetadata + std::error::Error + 'static>(
        action: &'static str,
        err: &SdkError<E>,
    ) -> Self {
        let status = err.raw_response().map(|r| r.status().as_u16());
        match err.code() {
            Some(code) => Ec2Error::Api {
                action,
                code: code.into(),
                message: err.message().unwrap_or_default().into(),
                status,
            },
            None => Ec2Error::Transport {
                action,
                reason: crate::error_chain(err),
            },
        }
    }
}

/// How hard to retry: exponential from `base`, capped, with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 8,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(20),
        }
    }
}

impl Backoff {
    /// Sleep before attempt `attempt + 1`: uniform in [0, min(cap, base·2^attempt)], so
    /// daemons that were throttled together do not retry together.
    fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1 << attempt.min(16)).min(self.cap);
        let ms = rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64);
        Duration::from_millis(ms)
    }
}

/// Per-instance-type limits from DescribeInstanceTypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniAttachment {
    pub id: String,
    pub device_index: u32,
    pub network_card: u32,
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniDescription {
    pub id: String,
    pub mac: String,
    pub subnet_id: String,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
    pub attachment: Option<EniAttachment>,
    pub interface_type: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub security_groups: Vec<String>,
}

impl EniDescription {
    /// Secondary addresses as /32s followed by the /28 prefixes.
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
        let ips = self.secondary_ips.iter().map(|ip| Ipv4Net::from(*ip));
        ips.chain(self.prefixes.iter().copied()).collect()
    }
}

/// A branch ENI's association with a trunk ENI, as DescribeTrunkInterfaceAssociations lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkAssociation {
    pub id: String,
    pub branch_eni: String,
    pub trunk_eni: String,
    pub vlan_id: u16,
}

/// Secondary addresses or /28 prefixes, by count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRequest {
    Ips(u32),
    Prefixes(u32),
}

#[derive(Debug, Clone)]
pub struct NewEni<'a> {
    pub subnet_id: &'a str,
    pub security_groups: &'a [String],
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub addresses: AddressRequest,
}

/// The tags of an ENI ipamd creates for `instance_id`.
pub fn eni_tags(
    instance_id: &str,
    cluster_name: Option<&str>,
    additional: &BTreeMap<String, String>,
    now: SystemTime,
) -> BTreeMap<String, String> {
    let mut tags = additional.clone();
    tags.insert(TAG_INSTANCE_ID.into(), instance_id.into());
    let created: chrono::DateTime<chrono::Utc> = now.into();
    tags.insert(
        TAG_CREATED_AT.into(),
        created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    if let Some(cluster) = cluster_name {
        tags.insert(TAG_CLUSTER.into(), cluster.into());
        tags.insert(TAG_OWNER.into(), "amazon-vpc-cni".into());
    }
    tags
}

/// Of the tags ipamd keeps on every ENI it manages, those `have` lacks or holds with
/// another value. createdAt is left out: it marks ENIs ipamd created, not adopted ones.
pub fn missing_tags(
    have: &BTreeMap<String, String>,
    instance_id: &str,
    cluster_name: Option<&str>,
    additional: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut want = eni_tags(
        instance_id,
        cluster_name,
        additional,
        SystemTime::UNIX_EPOCH,
    );
    want.remove(TAG_CREATED_AT);
    want.retain(|k, v| have.get(k) != Some(v));
    want
}

/// aws-node's description, which its leaked-ENI sweep looks for.
pub fn eni_description(instance_id: &str) -> String {
    format!("aws-K8S-{instance_id}")
}

/// Every item of a paginated describe call: `page` fetches the page a token names and returns
/// its items with the next token; the first page has no token.
async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, Ec2Error>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), Ec2Error>>,
{
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        match next {
            Some(t) => token = Some(t),
            None => return Ok(all),
        }
    }
}

/// The lowest device index not in `used`, within 0..=99.
pub fn lowest_free_device_index(used: &[u32]) -> Option<u32> {
    (0..=MAX_DEVICE_INDEX).find(|i| !used.contains(i))
}

/// The highest device index below `max_enis` (and at most 99) not in `used`, never the
/// primary's 0: where the trunk goes, away from the secondary ENIs that fill up from below.
pub fn highest_free_device_index(used: &[u32], max_enis: u32) -> Option<u32> {
    let top = max_enis.saturating_sub(1).min(MAX_DEVICE_INDEX);
    (1..=top).rev().find(|i| !used.contains(i))
}

/// A fresh ClientToken: retries of one logical request reuse it, so EC2 does the work once.
fn client_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[derive(Clone)]
pub struct Ec2 {
    client: Client,
    metrics: Arc<Metrics>,
    backoff: Backoff,
}

impl Ec2 {
    /// A client for `region`; `endpoint` (AWS_EC2_ENDPOINT) replaces the regional endpoint.
    /// The SDK's own retries are off: [`Ec2::call`] retries so every attempt is visible.
    pub async fn connect(region: &str, endpoint: Option<&str>, metrics: Arc<Metrics>) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(url) = endpoint {
            loader = loader.endpoint_url(url);
        }
        let sdk_config = loader.load().await;
        Ec2 {
            client: Client::new(&sdk_config),
            metrics,
            backoff: Backoff::default(),
        }
    }

    pub fn with_backoff(self, backoff: Backoff) -> Self {
        Ec2 { backoff, ..self }
    }

    /// Runs one EC2 action with retries; `send` builds and sends a fresh request each time.
    async fn call<T, E, F, Fut>(&self, action: &'static str, send: F) -> Result<T, Ec2Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = send().await;
            let latency = started.elapsed();
            let latency_ms = latency.as_millis() as u64;
            let err = match result {
                Ok(value) => {
                    self.metrics.aws_call(action, latency, None, Some(200));
                    tracing::debug!(action, latency_ms, attempt, outcome = "ok", "ec2 call");
                    return Ok(value);
                }
                Err(e) => Ec2Error::from_sdk(action, &e),
            };
            let status = match &err {
                Ec2Error::Api { status, .. } => *status,
                _ => None,
            };
            let code = err.code().unwrap_or("RequestError").to_string();
            self.metrics.aws_call(action, latency, Some(&code), status);
            if !err.retryable() || attempt >= self.backoff.attempts {
                tracing::debug!(action, latency_ms, attempt, outcome = %code, "ec2 call");
                return Err(err);
            }
            let delay = self.backoff.delay(attempt);
            tracing::warn!(
                action, latency_ms, attempt, outcome = %code,
                retry_in_ms = delay.as_millis() as u64, "ec2 call failed, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    pub async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits, Ec2Error> {
        const ACTION: &str = "DescribeInstanceTypes";
        let out = self
            .call(ACTION, || {
                self.client
                    .describe_instance_types()
                    .instance_types(InstanceType::from(instance_type))
                    .send()
            })
            .await?;
        let info = out
            .instance_types()
            .first()
            .and_then(|t| t.network_info())
            .ok_or(Ec2Error::NotFound {
                action: ACTION,
                what: instance_type.into(),
            })?;
        let positive = |v: Option<i32>, what| {
            v.filter(|v| *v > 0)
                .map(|v| v as u32)
                .ok_or(Ec2Error::Incomplete {
                    action: ACTION,
                    what,
                })
        };
        Ok(InstanceLimits {
            max_enis: positive(
                info.maximum_network_interfaces(),
                "MaximumNetworkInterfaces",
            )?,
            ipv4_per_eni: positive(
                info.ipv4_addresses_per_interface(),
                "Ipv4AddressesPerInterface",
            )?,
        })
    }

    /// Attached ENIs of the instance as (ENI id, device index), network card 0 only.
    pub async fn attached_enis(&self, instance_id: &str) -> Result<Vec<(String, u32)>, Ec2Error> {
        const ACTION: &str = "DescribeInstances";
        let out = self
            .call(ACTION, || {
                self.client
                    .describe_instances()
                    .instance_ids(instance_id)
                    .send()
            })
            .await?;
        let instance = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id))
            .ok_or(Ec2Error::NotFound {
                action: ACTION,
                what: instance_id.into(),
            })?;
        let enis = instance
            .network_interfaces()
            .iter()
            .filter_map(|eni| {
                let attachment = eni.attachment()?;
                let card = attachment.network_card_index().unwrap_or(0);
                let index = attachment.device_index()?;
                let id = eni.network_interface_id()?.to_string();
                (card == 0).then_some((id, index as u32))
            })
            .collect();
        Ok(enis)
    }

    pub async fn describe_enis(&self, ids: &[String]) -> Result<Vec<EniDescription>, Ec2Error> {
        const ACTION: &str = "DescribeNetworkInterfaces";
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let out = self
            .call(ACTION, || {
                self.client
                    .describe_network_interfaces()
                    .set_network_interface_ids(Some(ids.to_vec()))
                    .send()
            })
            .await?;
        out.network_interfaces()
            .iter()
            .map(|eni| describe(ACTION, eni))
            .collect()
    }

    pub async fn describe_eni(&self, id: &str) -> Result<EniDescription, Ec2Error> {
        let found = self.describe_enis(&[id.to_string()]).await?;
        found
            .into_iter()
            .find(|e| e.id == id)
            .ok_or(Ec2Error::NotFound {
                action: "DescribeNetworkInterfaces",
                what: id.into(),
            })
    }

    pub async fn create_eni(&self, new: &NewEni<'_>) -> Result<EniDescription, Ec2Error> {
        self.create(new, None).await
    }

    /// A trunk ENI, which carries branch ENIs on VLANs once attached.
    pub async fn create_trunk_eni(&self, new: &NewEni<'_>) -> Result<EniDescription, Ec2Error> {
        self.create(new, Some(NetworkInterfaceCreationType::Trunk))
            .await
    }

    async fn create(
        &self,
        new: &NewEni<'_>,
        kind: Option<NetworkInterfaceCreationType>,
    ) -> Result<EniDescription, Ec2Error> {
        const ACTION: &str = "CreateNetworkInterface";
        let tags: Vec<Tag> = new
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::NetworkInterface)
            .set_tags(Some(tags))
            .build();
        let out = self
            .call(ACTION, || {
                let req = self
                    .client
                    .create_network_interface()
                    .subnet_id(new.subnet_id)
                    .description(&new.description)
                    .set_groups(Some(new.security_groups.to_vec()))
                    .set_interface_type(kind.clone())
                    .tag_specifications(spec.clone());
                match new.addresses {
                    AddressRequest::Ips(0) | AddressRequest::Prefixes(0) => req,
                    AddressRequest::Ips(n) => req.secondary_private_ip_address_count(n as i32),
                    AddressRequest::Prefixes(n) => req.ipv4_prefix_count(n as i32),
                }
                .send()
            })
            .await?;
        let eni = out.network_interface().ok_or(Ec2Error::Incomplete {
            action: ACTION,
            what: "NetworkInterface",
        })?;
        describe(ACTION, eni)
    }

    /// Attaches at `device_index` and returns the attachment id.
    pub async fn attach_eni(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        const ACTION: &str = "AttachNetworkInterface";
        let out = self
            .call(ACTION, || {
                self.client
                    .attach_network_interface()
                    .network_interface_id(eni_id)
                    .instance_id(instance_id)
                    .device_index(device_index as i32)
                    .network_card_index(0)
                    .send()
            })
            .await?;
        out.attachment_id()
            .map(str::to_string)
            .ok_or(Ec2Error::Incomplete {
                action: ACTION,
                what: "AttachmentId",
            })
    }

    /// So the ENI goes away with the instance instead of leaking.
    pub async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        let change = NetworkInterfaceAttachmentChanges::builder()
            .attachment_id(attachment_id)
            .delete_on_termination(true)
            .build();
        self.call("ModifyNetworkInterfaceAttribute", || {
            self.client
                .modify_network_interface_attribute()
                .network_interface_id(eni_id)
                .attachment(change.clone())
                .send()
        })
        .await?;
        Ok(())
    }

    /// Asks for more addresses (or prefixes) on the ENI; returns the new ones.
    pub async fn assign_addresses(
        &self,
        eni_id: &str,
        request: AddressRequest,
    ) -> Result<Vec<Ipv4Net>, Ec2Error> {
        const ACTION: &str = "AssignPrivateIpAddresses";
        let out = self
            .call(ACTION, || {
                let req = self
                    .client
                    .assign_private_ip_addresses()
                    .network_interface_id(eni_id);
                match request {
                    AddressRequest::Ips(n) => req.secondary_private_ip_address_count(n as i32),
                    AddressRequest::Prefixes(n) => req.ipv4_prefix_count(n as i32),
                }
                .send()
            })
            .await?;
        let ips = out
            .assigned_private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address()?.parse::<Ipv4Addr>().ok())
            .map(Ipv4Net::from);
        let prefixes = out
            .assigned_ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix()?.parse().ok());
        Ok(ips.chain(prefixes).collect())
    }

    pub async fn unassign_addresses(
        &self,
        eni_id: &str,
        cidrs: &[Ipv4Net],
    ) -> Result<(), Ec2Error> {
        let (prefixes, ips): (Vec<Ipv4Net>, Vec<Ipv4Net>) =
            cidrs.iter().partition(|c| c.prefix_len() < 32);
        let ips: Vec<String> = ips.iter().map(|c| c.addr().to_string()).collect();
        let prefixes: Vec<String> = prefixes.iter().map(|c| c.to_string()).collect();
        self.call("UnassignPrivateIpAddresses", || {
            let req = self
                .client
                .unassign_private_ip_addresses()
                .network_interface_id(eni_id);
            let req = if ips.is_empty() {
                req
            } else {
                req.set_private_ip_addresses(Some(ips.clone()))
            };
            let req = if prefixes.is_empty() {
                req
            } else {
                req.set_ipv4_prefixes(Some(prefixes.clone()))
            };
            req.send()
        })
        .await?;
        Ok(())
    }

    pub async fn create_tags(
        &self,
        eni_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        self.call("CreateTags", || {
            self.client
                .create_tags()
                .resources(eni_id)
                .set_tags(Some(tags.clone()))
                .send()
        })
        .await?;
        Ok(())
    }

    /// Every ENI carrying tag `key` = `value`, all pages.
    pub async fn enis_tagged(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        const ACTION: &str = "DescribeNetworkInterfaces";
        let filter = Filter::builder()
            .name(format!("tag:{key}"))
            .values(value)
            .build();
        all_pages(|token| {
            let filter = filter.clone();
            async move {
                let out = self
                    .call(ACTION, || {
                        self.client
                            .describe_network_interfaces()
                            .filters(filter.clone())
                            .max_results(1000)
                            .set_next_token(token.clone())
                            .send()
                    })
                    .await?;
                let enis: Result<Vec<_>, _> = out
                    .network_interfaces()
                    .iter()
                    .map(|eni| describe(ACTION, eni))
                    .collect();
                Ok((enis?, out.next_token().map(str::to_string)))
            }
        })
        .await
    }

    /// The branch associations of one trunk ENI, all pages.
    pub async fn trunk_associations(
        &self,
        trunk_eni: &str,
    ) -> Result<Vec<TrunkAssociation>, Ec2Error> {
        const ACTION: &str = "DescribeTrunkInterfaceAssociations";
        let filter = Filter::builder()
            .name("trunk-interface-association.trunk-interface-id")
            .values(trunk_eni)
            .build();
        all_pages(|token| {
            let filter = filter.clone();
            async move {
                let out = self
                    .call(ACTION, || {
                        self.client
                            .describe_trunk_interface_associations()
                            .filters(filter.clone())
                            .max_results(255)
                            .set_next_token(token.clone())
                            .send()
                    })
                    .await?;
                let found: Result<Vec<_>, _> = out
                    .interface_associations()
                    .iter()
                    .map(|a| association(ACTION, a))
                    .collect();
                Ok((found?, out.next_token().map(str::to_string)))
            }
        })
        .await
    }

    /// Associates a branch ENI with the trunk under `vlan_id`; returns the association id.
    pub async fn associate_branch(
        &self,
        branch_eni: &str,
        trunk_eni: &str,
        vlan_id: u16,
    ) -> Result<String, Ec2Error> {
        const ACTION: &str = "AssociateTrunkInterface";
        let token = client_token();
        let out = self
            .call(ACTION, || {
                self.client
                    .associate_trunk_interface()
                    .branch_interface_id(branch_eni)
                    .trunk_interface_id(trunk_eni)
                    .vlan_id(i32::from(vlan_id))
                    .client_token(&token)
                    .send()
            })
            .await?;
        out.interface_association()
            .and_then(|a| a.association_id())
            .map(str::to_string)
            .ok_or(Ec2Error::Incomplete {
                action: ACTION,
                what: "AssociationId",
            })
    }

    /// Ends an association; one that is already gone counts as ended.
    pub async fn disassociate_branch(&self, association_id: &str) -> Result<(), Ec2Error> {
        let token = client_token();
        let result = self
            .call("DisassociateTrunkInterface", || {
                self.client
                    .disassociate_trunk_interface()
                    .association_id(association_id)
                    .client_token(&token)
                    .send()
            })
            .await;
        match result {
            Err(e) if e.code() == Some(ASSOCIATION_NOT_FOUND) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Replaces the ENI's security groups, all in one call.
    pub async fn set_security_groups(
        &self,
        eni_id: &str,
        groups: &[String],
    ) -> Result<(), Ec2Error> {
        self.call("ModifyNetworkInterfaceAttribute", || {
            self.client
                .modify_network_interface_attribute()
                .network_interface_id(eni_id)
                .set_groups(Some(groups.to_vec()))
                .send()
        })
        .await?;
        Ok(())
    }

    pub async fn detach_eni(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        self.call("DetachNetworkInterface", || {
            self.client
                .detach_network_interface()
                .attachment_id(attachment_id)
                .send()
        })
        .await?;
        Ok(())
    }

    /// Deletes the ENI; one that is already gone counts as deleted.
    pub async fn delete_eni(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let result = self
            .call("DeleteNetworkInterface", || {
                self.client
                    .delete_network_interface()
                    .network_interface_id(eni_id)
                    .send()
            })
            .await;
        match result {
            Err(e) if e.code() == Some(ENI_NOT_FOUND) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

fn describe(action: &'static str, eni: &NetworkInterface) -> Result<EniDescription, Ec2Error> {
    let missing = |what| Ec2Error::Incomplete { action, what };
    let primary_ip = eni
        .private_ip_address()
        .and_then(|ip| ip.parse().ok())
        .ok_or(missing("PrivateIpAddress"))?;
    let secondary_ips = eni
        .private_ip_addresses()
        .iter()
        .filter(|a| a.primary() != Some(true))
        .filter_map(|a| a.private_ip_address()?.parse().ok())
        .filter(|ip| *ip != primary_ip)
        .collect();
    let prefixes = eni
        .ipv4_prefixes()
        .iter()
        .filter_map(|p| p.ipv4_prefix()?.parse().ok())
        .collect();
    let attachment = eni.attachment().and_then(|a| {
        Some(EniAttachment {
            id: a.attachment_id()?.to_string(),
            device_index: a.device_index()? as u32,
            network_card: a.network_card_index().unwrap_or(0) as u32,
            instance_id: a.instance_id().map(str::to_string),
        })
    });
    Ok(EniDescription {
        id: eni
            .network_interface_id()
            .ok_or(missing("NetworkInterfaceId"))?
            .to_string(),
        mac: eni
            .mac_address()
            .ok_or(missing("MacAddress"))?
            .to_ascii_lowercase(),
        subnet_id: eni.subnet_id().unwrap_or_default().to_string(),
        primary_ip,
        secondary_ips,
        prefixes,
        attachment,
        interface_type: eni
            .interface_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        description: eni.description().unwrap_or_default().to_string(),
        tags: tags(eni),
        security_groups: eni
            .groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect(),
    })
}

fn tags(eni: &NetworkInterface) -> BTreeMap<String, String> {
    eni.tag_set()
        .iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn association(
    action: &'static str,
    a: &aws_sdk_ec2::types::TrunkInterfaceAssociation,
) -> Result<TrunkAssociation, Ec2Error> {
    let missing = |what| Ec2Error::Incomplete { action, what };
    let vlan_id = a
        .vlan_id()
        .and_then(|v| u16::try_from(v).ok())
        .ok_or(missing("VlanId"))?;
    Ok(TrunkAssociation {
        id: a.association_id().ok_or(missing("AssociationId"))?.into(),
        branch_eni: a
            .branch_interface_id()
            .ok_or(missing("BranchInterfaceId"))?
            .into(),
        trunk_eni: a
            .trunk_interface_id()
            .ok_or(missing("TrunkInterfaceId"))?
            .into(),
        vlan_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_aws_node() {
        let extra = BTreeMap::from([("team".to_string(), "net".to_string())]);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tags = eni_tags("i-0abc", Some("prod"), &extra, at);
        assert_eq!(tags[TAG_INSTANCE_ID], "i-0abc");
        assert_eq!(tags[TAG_CREATED_AT], "2023-11-14T22:13:20Z");
        assert_eq!(tags[TAG_CLUSTER], "prod");
        assert_eq!(tags[TAG_OWNER], "amazon-vpc-cni");
        assert_eq!(tags["team"], "net");
        let tags = eni_tags("i-0abc", None, &BTreeMap::new(), at);
        assert_eq!(tags.len(), 2, "no cluster tags without CLUSTER_NAME");
        assert_eq!(eni_description("i-0abc"), "aws-K8S-i-0abc");
    }

    #[test]
    fn adopted_enis_get_only_the_tags_they_lack() {
        let have = BTreeMap::from([
            (TAG_INSTANCE_ID.to_string(), "i-0abc".to_string()),
            (TAG_CLUSTER.to_string(), "old".to_string()),
        ]);
        let missing = missing_tags(&have, "i-0abc", Some("prod"), &BTreeMap::new());
        let keys: Vec<&str> = missing.keys().map(String::as_str).collect();
        assert_eq!(keys, vec![TAG_CLUSTER, TAG_OWNER]);
        assert_eq!(missing[TAG_CLUSTER], "prod");
        assert!(missing_tags(&have, "i-0abc", None, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn device_index_is_the_lowest_gap() {
        assert_eq!(lowest_free_device_index(&[0]), Some(1));
        assert_eq!(lowest_free_device_index(&[0, 2, 1, 4]), Some(3));
        let all: Vec<u32> = (0..=99).collect();
        assert_eq!(lowest_free_device_index(&all), None);
    }

    #[test]
    fn trunk_goes_to_the_highest_free_index() {
        assert_eq!(highest_free_device_index(&[0], 3), Some(2));
        assert_eq!(highest_free_device_index(&[0, 2], 3), Some(1));
        assert_eq!(highest_free_device_index(&[0, 1, 2], 3), None);
        assert_eq!(
            highest_free_device_index(&[0], 1),
            None,
            "never the primary's slot"
        );
        assert_eq!(highest_free_device_index(&[0], 737), Some(99));
    }

    #[test]
    fn throttling_and_server_errors_are_retried_others_not() {
        let api = |code: &str, status| Ec2Error::Api {
            action: "AttachNetworkInterface",
            code: code.into(),
            message: String::new(),
            status,
        };
        assert!(api("RequestLimitExceeded", Some(503)).retryable());
        assert!(api("Throttling", Some(400)).retryable());
        assert!(api("Whatever", Some(500)).retryable());
        assert!(!api(PRIVATE_IP_LIMIT_EXCEEDED, Some(400)).retryable());
        assert!(!api(INSUFFICIENT_FREE_ADDRESSES, Some(400)).retryable());
        assert!(Ec2Error::Transport {
            action: "x",
            reason: "reset".into()
        }
        .retryable());
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let b = Backoff {
            attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for attempt in 1..20 {
            let ceiling = Duration::from_millis(100 * (1u64 << attempt.min(16))).min(b.cap);
            assert!(b.delay(attempt) <= ceiling);
        }
    }
}
