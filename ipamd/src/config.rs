//! ipamd configuration, read once at start-up from aws-node's environment variables.
//!
//! Names, defaults and validation follow aws-node so an existing DaemonSet manifest keeps its
//! meaning. Every variable ipamd reads is listed in [`ENV_VARS`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use vpc_cni::cni::netconf::SgEnforcingMode;

use crate::sgp::warm::DEFAULT_WARM_BRANCH_ENI_TARGET;
pub use crate::sgp::{ENABLE_POD_ENI, KUBECONFIG, MY_NODE_NAME, WARM_BRANCH_ENI_TARGET};

pub const WARM_ENI_TARGET: &str = "WARM_ENI_TARGET";
pub const WARM_IP_TARGET: &str = "WARM_IP_TARGET";
pub const MINIMUM_IP_TARGET: &str = "MINIMUM_IP_TARGET";
pub const ENABLE_PREFIX_DELEGATION: &str = "ENABLE_PREFIX_DELEGATION";
pub const WARM_PREFIX_TARGET: &str = "WARM_PREFIX_TARGET";
pub const MAX_ENI: &str = "MAX_ENI";
pub const IP_COOLDOWN_PERIOD: &str = "IP_COOLDOWN_PERIOD";
pub const AWS_VPC_ENI_MTU: &str = "AWS_VPC_ENI_MTU";
pub const VETH_PREFIX: &str = "AWS_VPC_K8S_CNI_VETHPREFIX";
pub const CLUSTER_NAME: &str = "CLUSTER_NAME";
pub const ADDITIONAL_ENI_TAGS: &str = "ADDITIONAL_ENI_TAGS";
pub const LOG_LEVEL: &str = "AWS_VPC_K8S_CNI_LOGLEVEL";
pub const LOG_FILE: &str = "AWS_VPC_K8S_CNI_LOG_FILE";
pub const BACKING_STORE: &str = "AWS_VPC_K8S_CNI_BACKING_STORE";
pub const EC2_ENDPOINT: &str = "AWS_EC2_ENDPOINT";
pub const DISABLE_INTROSPECTION: &str = "DISABLE_INTROSPECTION";
pub const INTROSPECTION_BIND_ADDRESS: &str = "INTROSPECTION_BIND_ADDRESS";
pub const DISABLE_METRICS: &str = "DISABLE_METRICS";
pub const METRICS_BIND_ADDRESS: &str = "METRICS_BIND_ADDRESS";
pub const IPAMD_SOCKET_PATH: &str = "IPAMD_SOCKET_PATH";
pub const ENI_MIN_AGE_SECONDS: &str = "VPC_CNI_ENI_MIN_AGE_SECONDS";
pub const POOL_INTERVAL_MS: &str = "VPC_CNI_POOL_INTERVAL_MS";
pub const POD_SECURITY_GROUP_ENFORCING_MODE: &str = "POD_SECURITY_GROUP_ENFORCING_MODE";
pub const BRANCH_COOLDOWN_SECONDS: &str = "VPC_CNI_BRANCH_COOLDOWN_SECONDS";
pub const LEAK_SWEEP_SECONDS: &str = "VPC_CNI_LEAK_SWEEP_SECONDS";

/// Every variable [`Config::from_lookup`] reads; compared with the DaemonSet manifest in tests.
pub const ENV_VARS: &[&str] = &[
    WARM_ENI_TARGET,
    WARM_IP_TARGET,
    MINIMUM_IP_TARGET,
    ENABLE_PREFIX_DELEGATION,
    WARM_PREFIX_TARGET,
    MAX_ENI,
    IP_COOLDOWN_PERIOD,
    AWS_VPC_ENI_MTU,
    VETH_PREFIX,
    CLUSTER_NAME,
    ADDITIONAL_ENI_TAGS,
    LOG_LEVEL,
    LOG_FILE,
    BACKING_STORE,
    EC2_ENDPOINT,
    DISABLE_INTROSPECTION,
    INTROSPECTION_BIND_ADDRESS,
    DISABLE_METRICS,
    METRICS_BIND_ADDRESS,
    IPAMD_SOCKET_PATH,
    ENI_MIN_AGE_SECONDS,
    POOL_INTERVAL_MS,
    ENABLE_POD_ENI,
    POD_SECURITY_GROUP_ENFORCING_MODE,
    WARM_BRANCH_ENI_TARGET,
    MY_NODE_NAME,
    KUBECONFIG,
    BRANCH_COOLDOWN_SECONDS,
    LEAK_SWEEP_SECONDS,
];

/// Variables ipamd does not parse itself but the AWS SDK reads on its behalf.
pub const SDK_ENV_VARS: &[&str] = &[
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
];

const DEFAULT_LOG_FILE: &str = "/host/var/log/aws-routed-eni/ipamd.log";
const DEFAULT_BACKING_STORE: &str = "/var/run/aws-node/ipam.json";
const DEFAULT_INTROSPECTION: &str = "127.0.0.1:61679";
const DEFAULT_METRICS: &str = "127.0.0.1:61678";
const MIN_MTU: u32 = 576;
const MAX_MTU: u32 = 9001;
const RESERVED_VETH_PREFIXES: &[&str] = &["eth", "lo", "vlan"];
/// Tag keys under this domain belong to ipamd itself and cannot be overridden.
const RESERVED_TAG_DOMAIN: &str = "k8s.amazonaws.com";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name}: {value:?} is not a whole number")]
    NotANumber { name: &'static str, value: String },
    #[error("{name}: {value:?} is not a boolean")]
    NotABool { name: &'static str, value: String },
    #[error("{name}: {value} is out of range ({why})")]
    OutOfRange {
        name: &'static str,
        value: i64,
        why: &'static str,
    },
    #[error("{name}: {value:?} is not allowed ({why})")]
    Invalid {
        name: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{name}: {value:?} is not an address:port")]
    NotAnAddress { name: &'static str, value: String },
    #[error("{name}: not a JSON object of strings: {reason}")]
    BadTags { name: &'static str, reason: String },
    #[error("{MY_NODE_NAME}: must be set when {ENABLE_POD_ENI} is true")]
    NodeNameMissing,
    #[error(
        "{ENABLE_PREFIX_DELEGATION}: needs {WARM_PREFIX_TARGET}, {WARM_IP_TARGET} or \
         {MINIMUM_IP_TARGET} above zero"
    )]
    PrefixTargetsZero,
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub warm_eni_target: u32,
    pub warm_ip_target: u32,
    pub minimum_ip_target: u32,
    pub prefix_delegation: bool,
    pub warm_prefix_target: u32,
    /// `None` when unset or below 1: the instance limit alone applies.
    pub max_eni: Option<u32>,
    pub ip_cooldown: Duration,
    pub eni_mtu: u32,
    pub veth_prefix: String,
    pub cluster_name: Option<String>,
    pub additional_eni_tags: BTreeMap<String, String>,
    /// ADDITIONAL_ENI_TAGS keys dropped because ipamd owns them; logged at start-up.
    pub ignored_eni_tags: Vec<String>,
    pub log_level: tracing::level_filters::LevelFilter,
    pub log_target: LogTarget,
    pub backing_store: PathBuf,
    pub ec2_endpoint: Option<String>,
    /// `None` when introspection is disabled.
    pub introspection_bind: Option<SocketAddr>,
    /// `None` when metrics are disabled.
    pub metrics_bind: Option<SocketAddr>,
    pub socket_path: PathBuf,
    pub eni_min_age: Duration,
    pub pool_interval: Duration,
    /// How often EC2 is searched for ENIs of this node that nothing uses (see `sweep`).
    pub leak_sweep: Duration,
    pub pod_eni: PodEniConfig,
}

/// Security groups for pods (ENABLE_POD_ENI and its companions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEniConfig {
    pub enabled: bool,
    pub enforcing_mode: SgEnforcingMode,
    pub warm_branch_target: u32,
    /// The Node object this daemon runs on; required when enabled.
    pub node_name: Option<String>,
    /// `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// How long a released branch ENI waits before another pod may have it, so peers' ARP
    /// caches (60 s in Linux' default gc_stale_time) forget the old pod first.
    pub branch_cooldown: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any name → value source; unit tests pass a map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let (tags, ignored) = env.additional_tags()?;
        let config = Config {
            warm_eni_target: env.warm_eni_target()?,
            warm_ip_target: env.count(WARM_IP_TARGET, 0)?,
            minimum_ip_target: env.count(MINIMUM_IP_TARGET, 0)?,
            prefix_delegation: env.flag(ENABLE_PREFIX_DELEGATION, false)?,
            warm_prefix_target: env.count(WARM_PREFIX_TARGET, 0)?,
            max_eni: env.max_eni()?,
            ip_cooldown: Duration::from_secs(env.count(IP_COOLDOWN_PERIOD, 30)?.into()),
            eni_mtu: env.mtu()?,
            veth_prefix: env.veth_prefix()?,
            cluster_name: env.get(CLUSTER_NAME),
            additional_eni_tags: tags,
            ignored_eni_tags: ignored,
            log_level: env.log_level()?,
            log_target: env.log_target(),
            backing_store: env
                .get(BACKING_STORE)
                .unwrap_or(DEFAULT_BACKING_STORE.into())
                .into(),
            ec2_endpoint: env.get(EC2_ENDPOINT),
            introspection_bind: env.listener(
                DISABLE_INTROSPECTION,
                INTROSPECTION_BIND_ADDRESS,
                DEFAULT_INTROSPECTION,
            )?,
            metrics_bind: env.listener(DISABLE_METRICS, METRICS_BIND_ADDRESS, DEFAULT_METRICS)?,
            socket_path: env
                .get(IPAMD_SOCKET_PATH)
                .unwrap_or(vpc_cni_proto::DEFAULT_SOCKET.into())
                .into(),
            eni_min_age: Duration::from_secs(env.count(ENI_MIN_AGE_SECONDS, 60)?.into()),
            pool_interval: env.pool_interval()?,
            leak_sweep: Duration::from_secs(env.leak_sweep_seconds()?.into()),
            pod_eni: env.pod_eni()?,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let any_target =
            self.warm_prefix_target > 0 || self.warm_ip_target > 0 || self.minimum_ip_target > 0;
        if self.prefix_delegation && !any_target {
            return Err(ConfigError::PrefixTargetsZero);
        }
        if self.pod_eni.enabled && self.pod_eni.node_name.is_none() {
            return Err(ConfigError::NodeNameMissing);
        }
        Ok(())
    }

    /// WARM_IP_TARGET or MINIMUM_IP_TARGET set: they replace WARM_ENI_TARGET/WARM_PREFIX_TARGET.
    pub fn warm_ip_targets_set(&self) -> bool {
        self.warm_ip_target > 0 || self.minimum_ip_target > 0
    }

    /// The active settings by variable name, as the introspection endpoint shows them.
    pub fn as_env_map(&self) -> BTreeMap<&'static str, String> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let addr = |v: &Option<SocketAddr>| v.map(|a| a.to_string()).unwrap_or_default();
        BTreeMap::from([
            (WARM_ENI_TARGET, self.warm_eni_target.to_string()),
            (WARM_IP_TARGET, self.warm_ip_target.to_string()),
            (MINIMUM_IP_TARGET, self.minimum_ip_target.to_string()),
            (ENABLE_PREFIX_DELEGATION, self.prefix_delegation.to_string()),
            (WARM_PREFIX_TARGET, self.warm_prefix_target.to_string()),
            (MAX_ENI, self.max_eni.map_or("-1".into(), |m| m.to_string())),
            (IP_COOLDOWN_PERIOD, self.ip_cooldown.as_secs().to_string()),
            (AWS_VPC_ENI_MTU, self.eni_mtu.to_string()),
            (VETH_PREFIX, self.veth_prefix.clone()),
            (CLUSTER_NAME, opt(&self.cluster_name)),
            (
                ADDITIONAL_ENI_TAGS,
                serde_json::to_string(&self.additional_eni_tags).unwrap_or_default(),
            ),
            (LOG_LEVEL, self.log_level.to_string()),
            (BACKING_STORE, self.backing_store.display().to_string()),
            (EC2_ENDPOINT, opt(&self.ec2_endpoint)),
            (INTROSPECTION_BIND_ADDRESS, addr(&self.introspection_bind)),
            (METRICS_BIND_ADDRESS, addr(&self.metrics_bind)),
            (IPAMD_SOCKET_PATH, self.socket_path.display().to_string()),
            (ENI_MIN_AGE_SECONDS, self.eni_min_age.as_secs().to_string()),
            (POOL_INTERVAL_MS, self.pool_interval.as_millis().to_string()),
            (ENABLE_POD_ENI, self.pod_eni.enabled.to_string()),
            (
                POD_SECURITY_GROUP_ENFORCING_MODE,
                mode_name(self.pod_eni.enforcing_mode).into(),
            ),
            (
                WARM_BRANCH_ENI_TARGET,
                self.pod_eni.warm_branch_target.to_string(),
            ),
            (MY_NODE_NAME, opt(&self.pod_eni.node_name)),
            (
                KUBECONFIG,
                self.pod_eni
                    .kubeconfig
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            (
                BRANCH_COOLDOWN_SECONDS,
                self.pod_eni.branch_cooldown.as_secs().to_string(),
            ),
            (LEAK_SWEEP_SECONDS, self.leak_sweep.as_secs().to_string()),
        ])
    }
}

/// The spelling aws-node and the plugin's `podSGEnforcingMode` use.
pub fn mode_name(mode: SgEnforcingMode) -> &'static str {
    match mode {
        SgEnforcingMode::Strict => "strict",
        SgEnforcingMode::Standard => "standard",
    }
}

/// Typed accessors over the lookup; an empty value counts as unset, as in aws-node.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn int(&self, name: &'static str) -> Result<Option<i64>, ConfigError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        value
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::NotANumber { name, value })
    }

    /// A non-negative integer with a default.
    fn count(&self, name: &'static str, default: u32) -> Result<u32, ConfigError> {
        match self.int(name)? {
            None => Ok(default),
            Some(v) => u32::try_from(v).map_err(|_| ConfigError::OutOfRange {
                name,
                value: v,
                why: "must be between 0 and 4294967295",
            }),
        }
    }

    /// Go's strconv.ParseBool spellings, which aws-node accepts.
    fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        let Some(value) = self.get(name) else {
            return Ok(default);
        };
        match value.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            _ => Err(ConfigError::NotABool { name, value }),
        }
    }

    /// aws-node treats a negative WARM_ENI_TARGET as the default rather than an error.
    fn warm_eni_target(&self) -> Result<u32, ConfigError> {
        match self.int(WARM_ENI_TARGET)? {
            None => Ok(1),
            Some(v) if v < 0 => Ok(1),
            Some(v) => u32::try_from(v).map_err(|_| ConfigError::OutOfRange {
                name: WARM_ENI_TARGET,
                value: v,
                why: "too large",
            }),
        }
    }

    fn max_eni(&self) -> Result<Option<u32>, ConfigError> {
        Ok(self
            .int(MAX_ENI)?
            .filter(|v| *v >= 1)
            .map(|v| v.min(u32::MAX.into()) as u32))
    }

    fn mtu(&self) -> Result<u32, ConfigError> {
        let Some(v) = self.int(AWS_VPC_ENI_MTU)? else {
            return Ok(MAX_MTU);
        };
        if !(i64::from(MIN_MTU)..=i64::from(MAX_MTU)).contains(&v) {
            return Err(ConfigError::OutOfRange {
                name: AWS_VPC_ENI_MTU,
                value: v,
                why: "must be between 576 and 9001",
            });
        }
        Ok(v as u32)
    }

    fn veth_prefix(&self) -> Result<String, ConfigError> {
        let value = self.get(VETH_PREFIX).unwrap_or_else(|| "eni".into());
        let invalid = |why| ConfigError::Invalid {
            name: VETH_PREFIX,
            value: value.clone(),
            why,
        };
        if value.len() > 4 {
            return Err(invalid("at most 4 characters"));
        }
        if RESERVED_VETH_PREFIXES.contains(&value.as_str()) {
            return Err(invalid("eth, lo and vlan are reserved"));
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid("only letters, digits, '-' and '_'"));
        }
        Ok(value)
    }

    /// The tags to add, and the reserved keys left out.
    fn additional_tags(&self) -> Result<(BTreeMap<String, String>, Vec<String>), ConfigError> {
        let Some(value) = self.get(ADDITIONAL_ENI_TAGS) else {
            return Ok(Default::default());
        };
        let tags: BTreeMap<String, String> =
            serde_json::from_str(&value).map_err(|e| ConfigError::BadTags {
                name: ADDITIONAL_ENI_TAGS,
                reason: e.to_string(),
            })?;
        let (reserved, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = tags
            .into_iter()
            .partition(|(k, _)| k.contains(RESERVED_TAG_DOMAIN));
        Ok((kept, reserved.into_keys().collect()))
    }

    fn log_level(&self) -> Result<tracing::level_filters::LevelFilter, ConfigError> {
        use tracing::level_filters::LevelFilter;
        let Some(value) = self.get(LOG_LEVEL) else {
            return Ok(LevelFilter::DEBUG);
        };
        match value.to_ascii_lowercase().as_str() {
            "trace" => Ok(LevelFilter::TRACE),
            "debug" => Ok(LevelFilter::DEBUG),
            "info" => Ok(LevelFilter::INFO),
            "warn" | "warning" => Ok(LevelFilter::WARN),
            "error" | "fatal" | "panic" => Ok(LevelFilter::ERROR),
            _ => Err(ConfigError::Invalid {
                name: LOG_LEVEL,
                value,
                why: "one of trace, debug, info, warn, error",
            }),
        }
    }

    fn log_target(&self) -> LogTarget {
        match self.get(LOG_FILE).as_deref() {
            Some("stderr") => LogTarget::Stderr,
            Some("stdout") => LogTarget::Stdout,
            Some(path) => LogTarget::File(path.into()),
            None => LogTarget::File(DEFAULT_LOG_FILE.into()),
        }
    }

    fn listener(
        &self,
        disable: &'static str,
        name: &'static str,
        default: &str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        if self.flag(disable, false)? {
            return Ok(None);
        }
        let value = self.get(name).unwrap_or_else(|| default.into());
        value
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::NotAnAddress { name, value })
    }

    fn pod_eni(&self) -> Result<PodEniConfig, ConfigError> {
        Ok(PodEniConfig {
            enabled: self.flag(ENABLE_POD_ENI, false)?,
            enforcing_mode: self.enforcing_mode()?,
            warm_branch_target: self
                .count(WARM_BRANCH_ENI_TARGET, DEFAULT_WARM_BRANCH_ENI_TARGET)?,
            node_name: self.get(MY_NODE_NAME),
            kubeconfig: self.get(KUBECONFIG).map(PathBuf::from),
            branch_cooldown: Duration::from_secs(self.count(BRANCH_COOLDOWN_SECONDS, 60)?.into()),
        })
    }

    fn leak_sweep_seconds(&self) -> Result<u32, ConfigError> {
        let secs = self.count(LEAK_SWEEP_SECONDS, 600)?;
        if secs == 0 {
            return Err(ConfigError::OutOfRange {
                name: LEAK_SWEEP_SECONDS,
                value: 0,
                why: "must be at least 1",
            });
        }
        Ok(secs)
    }

    /// The values aws-node documents, exactly: the plugin reads the same words from
    /// `podSGEnforcingMode`, and a typo must not silently weaken enforcement.
    fn enforcing_mode(&self) -> Result<SgEnforcingMode, ConfigError> {
        match self.get(POD_SECURITY_GROUP_ENFORCING_MODE).as_deref() {
            None | Some("strict") => Ok(SgEnforcingMode::Strict),
            Some("standard") => Ok(SgEnforcingMode::Standard),
            Some(other) => Err(ConfigError::Invalid {
                name: POD_SECURITY_GROUP_ENFORCING_MODE,
                value: other.into(),
                why: "strict or standard",
            }),
        }
    }

    fn pool_interval(&self) -> Result<Duration, ConfigError> {
        match self.count(POOL_INTERVAL_MS, 5000)? {
            0 => Err(ConfigError::OutOfRange {
                name: POOL_INTERVAL_MS,
                value: 0,
                why: "must be at least 1",
            }),
            ms => Ok(Duration::from_millis(ms.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_aws_node() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.warm_eni_target, 1);
        assert_eq!(
            (c.warm_ip_target, c.minimum_ip_target, c.warm_prefix_target),
            (0, 0, 0)
        );
        assert!(!c.prefix_delegation);
        assert_eq!(c.max_eni, None);
        assert_eq!(c.ip_cooldown, Duration::from_secs(30));
        assert_eq!(c.eni_mtu, 9001);
        assert_eq!(c.veth_prefix, "eni");
        assert_eq!(
            c.backing_store,
            PathBuf::from("/var/run/aws-node/ipam.json")
        );
        assert_eq!(
            c.introspection_bind,
            Some("127.0.0.1:61679".parse().unwrap())
        );
        assert_eq!(c.metrics_bind, Some("127.0.0.1:61678".parse().unwrap()));
        assert_eq!(c.socket_path, PathBuf::from("/var/run/aws-node/ipamd.sock"));
        assert_eq!(c.eni_min_age, Duration::from_secs(60));
        assert_eq!(c.pool_interval, Duration::from_millis(5000));
        assert_eq!(c.log_level, tracing::level_filters::LevelFilter::DEBUG);
        assert_eq!(c.log_target, LogTarget::File(DEFAULT_LOG_FILE.into()));
        assert!(!c.pod_eni.enabled);
        assert_eq!(c.pod_eni.enforcing_mode, SgEnforcingMode::Strict);
        assert_eq!(c.pod_eni.warm_branch_target, 1);
        assert_eq!(c.pod_eni.branch_cooldown, Duration::from_secs(60));
        assert_eq!(c.leak_sweep, Duration::from_secs(600));
        assert_eq!((c.pod_eni.node_name, c.pod_eni.kubeconfig), (None, None));
    }

    #[test]
    fn pod_eni_needs_the_node_name() {
        let err = parse(&[(ENABLE_POD_ENI, "true")]).unwrap_err();
        assert_eq!(err, ConfigError::NodeNameMissing);
        assert!(err.to_string().starts_with(MY_NODE_NAME));
        let c = parse(&[
            (ENABLE_POD_ENI, "true"),
            (MY_NODE_NAME, "node-a"),
            (POD_SECURITY_GROUP_ENFORCING_MODE, "standard"),
            (WARM_BRANCH_ENI_TARGET, "3"),
            (KUBECONFIG, "/etc/kube/config"),
            (BRANCH_COOLDOWN_SECONDS, "5"),
        ])
        .unwrap();
        assert!(c.pod_eni.enabled);
        assert_eq!(c.pod_eni.enforcing_mode, SgEnforcingMode::Standard);
        assert_eq!(c.pod_eni.warm_branch_target, 3);
        assert_eq!(c.pod_eni.node_name.as_deref(), Some("node-a"));
        assert_eq!(
            c.pod_eni.kubeconfig,
            Some(PathBuf::from("/etc/kube/config"))
        );
        assert_eq!(c.pod_eni.branch_cooldown, Duration::from_secs(5));
    }

    #[test]
    fn negative_warm_eni_target_falls_back_to_one() {
        assert_eq!(
            parse(&[(WARM_ENI_TARGET, "-3")]).unwrap().warm_eni_target,
            1
        );
        assert_eq!(parse(&[(WARM_ENI_TARGET, "0")]).unwrap().warm_eni_target, 0);
        assert_eq!(parse(&[(WARM_ENI_TARGET, "2")]).unwrap().warm_eni_target, 2);
    }

    #[test]
    fn max_eni_below_one_is_ignored() {
        assert_eq!(parse(&[(MAX_ENI, "0")]).unwrap().max_eni, None);
        assert_eq!(parse(&[(MAX_ENI, "-1")]).unwrap().max_eni, None);
        assert_eq!(parse(&[(MAX_ENI, "2")]).unwrap().max_eni, Some(2));
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (name, value) in [
            (WARM_IP_TARGET, "lots"),
            (WARM_IP_TARGET, "-1"),
            (IP_COOLDOWN_PERIOD, "-5"),
            (AWS_VPC_ENI_MTU, "575"),
            (AWS_VPC_ENI_MTU, "9002"),
            (VETH_PREFIX, "abcde"),
            (VETH_PREFIX, "eth"),
            (VETH_PREFIX, "lo"),
            (VETH_PREFIX, "vlan"),
            (ENABLE_PREFIX_DELEGATION, "yes"),
            (ADDITIONAL_ENI_TAGS, "{not json"),
            (ADDITIONAL_ENI_TAGS, "{\"a\": 1}"),
            (LOG_LEVEL, "loud"),
            (METRICS_BIND_ADDRESS, "localhost"),
            (POOL_INTERVAL_MS, "0"),
            (POD_SECURITY_GROUP_ENFORCING_MODE, "Strict"),
            (POD_SECURITY_GROUP_ENFORCING_MODE, "loose"),
            (WARM_BRANCH_ENI_TARGET, "-1"),
            (BRANCH_COOLDOWN_SECONDS, "soon"),
            (LEAK_SWEEP_SECONDS, "0"),
            (ENABLE_POD_ENI, "yes"),
        ] {
            let err = parse(&[(name, value)]).expect_err(name).to_string();
            assert!(err.starts_with(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn mtu_bounds_are_inclusive() {
        assert_eq!(parse(&[(AWS_VPC_ENI_MTU, "576")]).unwrap().eni_mtu, 576);
        assert_eq!(parse(&[(AWS_VPC_ENI_MTU, "1500")]).unwrap().eni_mtu, 1500);
    }

    #[test]
    fn prefix_delegation_needs_a_target() {
        let err = parse(&[(ENABLE_PREFIX_DELEGATION, "true")]).unwrap_err();
        assert_eq!(err, ConfigError::PrefixTargetsZero);
        assert!(err.to_string().starts_with(ENABLE_PREFIX_DELEGATION));
        for target in [WARM_PREFIX_TARGET, WARM_IP_TARGET, MINIMUM_IP_TARGET] {
            let c = parse(&[(ENABLE_PREFIX_DELEGATION, "true"), (target, "1")]).unwrap();
            assert!(c.prefix_delegation);
        }
    }

    #[test]
    fn reserved_tag_keys_are_dropped() {
        let tags = r#"{"team":"net","node.k8s.amazonaws.com/instance_id":"i-x","a.k8s.amazonaws.com":"b"}"#;
        let c = parse(&[(ADDITIONAL_ENI_TAGS, tags)]).unwrap();
        assert_eq!(
            c.additional_eni_tags,
            BTreeMap::from([("team".into(), "net".into())])
        );
    }

    #[test]
    fn log_file_accepts_the_standard_streams() {
        assert_eq!(
            parse(&[(LOG_FILE, "stderr")]).unwrap().log_target,
            LogTarget::Stderr
        );
        assert_eq!(
            parse(&[(LOG_FILE, "stdout")]).unwrap().log_target,
            LogTarget::Stdout
        );
        assert_eq!(
            parse(&[(LOG_LEVEL, "INFO")]).unwrap().log_level.to_string(),
            "info"
        );
    }

    #[test]
    fn listeners_can_be_disabled() {
        let c = parse(&[(DISABLE_METRICS, "true"), (DISABLE_INTROSPECTION, "true")]).unwrap();
        assert_eq!((c.metrics_bind, c.introspection_bind), (None, None));
    }

    #[test]
    fn env_map_covers_every_parsed_variable() {
        let map = parse(&[]).unwrap().as_env_map();
        for name in ENV_VARS {
            let display_only = [LOG_FILE, DISABLE_INTROSPECTION, DISABLE_METRICS];
            assert!(
                map.contains_key(name) || display_only.contains(name),
                "{name}"
            );
        }
    }
}
