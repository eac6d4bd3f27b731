//! The network configuration on stdin: decoded (CNI error 6 when it is not the right JSON),
//! version-checked (1), then validated field by field (7).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::result::{CniResult, ResultError};
use super::version::{self, Version};
use crate::names::{BRANCH_VETH_PREFIX, DEFAULT_VETH_PREFIX};

/// Pod MTU when the config names none, as aws-node's AWS_VPC_ENI_MTU default.
pub const DEFAULT_MTU: u32 = 9001;
/// Bounds aws-node accepts for an IPv4 pod MTU.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9001;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SgEnforcingMode {
    #[default]
    Strict,
    Standard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One `{containerID, ifname}` entry of a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub plugin_type: String,
    pub mtu: u32,
    pub veth_prefix: String,
    pub sg_mode: SgEnforcingMode,
    pub log_file: Option<PathBuf>,
    pub log_level: LogLevel,
    pub ipamd_socket: PathBuf,
    pub prev_result: Option<CniResult>,
    pub runtime_config: Map<String, Value>,
    pub disable_check: bool,
    pub disable_gc: bool,
    /// GC only: the union of `cni.dev/valid-attachments` and the older `cni.dev/attachments`;
    /// None when the request carries neither key.
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("network config is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("network config: {0}")]
    Shape(#[source] serde_json::Error),
    #[error("network config: incompatible cni version {requested}; supported: {supported}")]
    Incompatible {
        requested: String,
        supported: String,
    },
    #[error("network config: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("network config: prevResult: {0}")]
    PrevResult(#[source] ResultError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    plugin_type: String,
    #[serde(default)]
    mtu: Option<Value>,
    #[serde(default)]
    veth_prefix: Option<String>,
    #[serde(default, rename = "podSGEnforcingMode")]
    pod_sg_enforcing_mode: Option<String>,
    #[serde(default)]
    plugin_log_file: Option<String>,
    #[serde(default)]
    plugin_log_level: Option<String>,
    #[serde(default)]
    ipamd_socket: Option<String>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    runtime_config: Option<Map<String, Value>>,
    #[serde(default)]
    disable_check: bool,
    #[serde(default, rename = "disableGC")]
    disable_gc: bool,
    #[serde(
        default,
        rename = "cni.dev/valid-attachments",
        deserialize_with = "present"
    )]
    valid_attachments: Option<Option<Vec<Attachment>>>,
    #[serde(default, rename = "cni.dev/attachments", deserialize_with = "present")]
    attachments: Option<Option<Vec<Attachment>>>,
}

/// Tells a key given as `null` (Some(None)) from a key left out (None, via `default`).
fn present<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, ConfError> {
        let value: Value = serde_json::from_slice(stdin).map_err(ConfError::Json)?;
        let cni_version = requested_version(&value)?;
        let raw: RawConf = serde_json::from_value(value).map_err(ConfError::Shape)?;
        let prev_result = match &raw.prev_result {
            Some(prev) if !prev.is_null() => Some(
                CniResult::decode(prev, cni_version)
                    .map_err(ConfError::PrevResult)?
                    .0,
            ),
            _ => None,
        };
        Ok(NetConf {
            cni_version,
            name: validate_name(&raw.name)?,
            plugin_type: raw.plugin_type,
            mtu: parse_mtu(raw.mtu.as_ref())?,
            veth_prefix: validate_prefix(raw.veth_prefix.as_deref())?,
            sg_mode: parse_sg_mode(raw.pod_sg_enforcing_mode.as_deref())?,
            log_file: raw
                .plugin_log_file
                .filter(|f| !f.is_empty())
                .map(PathBuf::from),
            log_level: parse_level(raw.plugin_log_level.as_deref())?,
            ipamd_socket: raw.ipamd_socket.filter(|s| !s.is_empty()).map_or_else(
                || PathBuf::from(vpc_cni_proto::DEFAULT_SOCKET),
                PathBuf::from,
            ),
            prev_result,
            runtime_config: raw.runtime_config.unwrap_or_default(),
            disable_check: raw.disable_check,
            disable_gc: raw.disable_gc,
            valid_attachments: union_attachments(raw.valid_attachments, raw.attachments),
        })
    }
}

/// The version the request is made in. Runtimes set `cniVersion`; a config that only lists
/// `cniVersions` gets the newest version both sides support.
pub fn requested_version(value: &Value) -> Result<Version, ConfError> {
    let declared = value
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if declared.is_empty() {
        return newest_listed(value).ok_or_else(|| incompatible("none"));
    }
    match declared.parse::<Version>() {
        Ok(v) if v.is_supported() => Ok(v),
        _ => Err(incompatible(declared)),
    }
}

fn newest_listed(value: &Value) -> Option<Version> {
    let listed = value.get("cniVersions")?.as_array()?;
    listed
        .iter()
        .filter_map(|v| v.as_str()?.parse::<Version>().ok())
        .filter(|v| v.is_supported())
        .max()
}

fn incompatible(requested: &str) -> ConfError {
    ConfError::Incompatible {
        requested: requested.to_string(),
        supported: version::supported_strings().join(", "),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfError {
    ConfError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Network names key allocations and become file names in runtimes' caches.
fn validate_name(name: &str) -> Result<String, ConfError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(name.to_string())
    } else {
        Err(invalid(
            "name",
            format!("{name:?} must start with a letter or digit, then letters, digits, _ . -"),
        ))
    }
}

/// aws-node writes the MTU as a string; hand-written configs use a number. Either is accepted.
/// Unlike aws-node, which silently falls back to 9001, a value that is not a number or is out
/// of range is refused: a pod with a wrong MTU fails far from its cause.
fn parse_mtu(raw: Option<&Value>) -> Result<u32, ConfError> {
    let mtu = match raw {
        None | Some(Value::Null) => return Ok(DEFAULT_MTU),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(DEFAULT_MTU),
        Some(Value::String(s)) => s.trim().parse::<u32>().ok(),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Some(_) => None,
    };
    match mtu {
        Some(m) if MTU_RANGE.contains(&m) => Ok(m),
        _ => Err(invalid(
            "mtu",
            format!("{} is not a number in 576-9001", raw.unwrap()),
        )),
    }
}

/// With a 4-character prefix the host veth name is exactly 15 bytes; longer would not fit.
/// "eth", "lo" and "vlan" would collide with ENI, loopback and branch-ENI link names.
fn validate_prefix(raw: Option<&str>) -> Result<String, ConfError> {
    let prefix = match raw {
        None | Some("") => return Ok(DEFAULT_VETH_PREFIX.to_string()),
        Some(p) => p,
    };
    if prefix.len() > 4 {
        return Err(invalid(
            "vethPrefix",
            format!("{prefix:?} is longer than 4 characters"),
        ));
    }
    if ["eth", "lo", BRANCH_VETH_PREFIX].contains(&prefix) {
        return Err(invalid("vethPrefix", format!("{prefix:?} is reserved")));
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            "vethPrefix",
            format!("{prefix:?} has characters unfit for a link name"),
        ));
    }
    Ok(prefix.to_string())
}

fn parse_sg_mode(raw: Option<&str>) -> Result<SgEnforcingMode, ConfError> {
    match raw {
        None | Some("") | Some("strict") => Ok(SgEnforcingMode::Strict),
        Some("standard") => Ok(SgEnforcingMode::Standard),
        Some(other) => Err(invalid(
            "podSGEnforcingMode",
            format!("{other:?} is not strict or standard"),
        )),
    }
}

/// aws-node writes levels capitalised ("Debug"); case is ignored.
fn parse_level(raw: Option<&str>) -> Result<LogLevel, ConfError> {
    let level = raw.unwrap_or("").to_ascii_lowercase();
    match level.as_str() {
        "trace" => Ok(LogLevel::Trace),
        "debug" => Ok(LogLevel::Debug),
        "" | "info" => Ok(LogLevel::Info),
        "warn" | "warning" => Ok(LogLevel::Warn),
        "error" => Ok(LogLevel::Error),
        _ => Err(invalid(
            "pluginLogLevel",
            format!("{} is not a log level", raw.unwrap_or("")),
        )),
    }
}

/// libcni sends both keys; a runtime following the older spec text sends only
/// `cni.dev/attachments`. Either key with `null` means an empty list.
fn union_attachments(
    valid: Option<Option<Vec<Attachment>>>,
    older: Option<Option<Vec<Attachment>>>,
) -> Option<Vec<Attachment>> {
    if valid.is_none() && older.is_none() {
        return None;
    }
    // A runtime may list every container of the node: keep the de-duplication linear.
    let mut seen = std::collections::HashSet::new();
    let all = valid
        .flatten()
        .into_iter()
        .chain(older.flatten())
        .flatten()
        .filter(|a| seen.insert(a.clone()))
        .collect();
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, ConfError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"cniVersion": "0.4.0", "name": "aws-cni", "type": "vpc-cni", "mtu": "9001",
               "vethPrefix": "eni", "podSGEnforcingMode": "strict"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    #[test]
    fn base_config_and_defaults() {
        let conf = parse(json!({"cniVersion": "1.0.0", "name": "aws-cni"})).unwrap();
        assert_eq!(conf.mtu, DEFAULT_MTU);
        assert_eq!(conf.veth_prefix, "eni");
        assert_eq!(conf.sg_mode, SgEnforcingMode::Strict);
        assert_eq!(conf.log_level, LogLevel::Info);
        assert_eq!(
            conf.ipamd_socket,
            PathBuf::from(vpc_cni_proto::DEFAULT_SOCKET)
        );
        assert!(conf.prev_result.is_none());
        assert!(conf.valid_attachments.is_none());
    }

    #[test]
    fn mtu_as_string_or_number() {
        assert_eq!(parse(with("mtu", json!("1500"))).unwrap().mtu, 1500);
        assert_eq!(parse(with("mtu", json!(1500))).unwrap().mtu, 1500);
        assert_eq!(parse(with("mtu", json!(""))).unwrap().mtu, 9001);
        for bad in [
            json!("jumbo"),
            json!(100),
            json!(9002),
            json!(-1),
            json!(1.5),
            json!(true),
        ] {
            assert!(
                matches!(
                    parse(with("mtu", bad.clone())),
                    Err(ConfError::Invalid { field: "mtu", .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn veth_prefix_rules() {
        assert_eq!(
            parse(with("vethPrefix", json!("abcd")))
                .unwrap()
                .veth_prefix,
            "abcd"
        );
        for bad in ["abcde", "eth", "lo", "vlan", "a/b"] {
            assert!(parse(with("vethPrefix", json!(bad))).is_err(), "{bad}");
        }
    }

    #[test]
    fn sg_mode_and_log_level() {
        let conf = parse(with("podSGEnforcingMode", json!("standard"))).unwrap();
        assert_eq!(conf.sg_mode, SgEnforcingMode::Standard);
        assert!(parse(with("podSGEnforcingMode", json!("loose"))).is_err());
        assert_eq!(
            parse(with("pluginLogLevel", json!("Debug")))
                .unwrap()
                .log_level,
            LogLevel::Debug
        );
        assert!(parse(with("pluginLogLevel", json!("chatty"))).is_err());
    }

    #[test]
    fn version_checks() {
        for ok in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert_eq!(
                parse(with("cniVersion", json!(ok)))
                    .unwrap()
                    .cni_version
                    .to_string(),
                ok
            );
        }
        for bad in ["2.0.0", "1.0.1", "0.3.0", "0.2.0", "garbage"] {
            let err = parse(with("cniVersion", json!(bad))).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(bad) && msg.contains("0.3.1, 0.4.0, 1.0.0, 1.1.0"),
                "{msg}"
            );
        }
        let listed = json!({"name": "n", "cniVersions": ["0.4.0", "1.0.0", "9.9.9"]});
        assert_eq!(parse(listed).unwrap().cni_version.to_string(), "1.0.0");
        assert!(matches!(
            parse(json!({"name": "n"})),
            Err(ConfError::Incompatible { .. })
        ));
    }

    #[test]
    fn decode_errors_are_distinct_from_invalid_values() {
        assert!(matches!(
            NetConf::parse(b"{not json"),
            Err(ConfError::Json(_))
        ));
        assert!(matches!(
            parse(with("vethPrefix", json!(5))),
            Err(ConfError::Shape(_))
        ));
        assert!(matches!(
            parse(with("name", json!("-bad"))),
            Err(ConfError::Invalid { field: "name", .. })
        ));
    }

    #[test]
    fn prev_result_uses_its_own_version() {
        let prev = json!({"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/n"}],
                          "ips": [{"version": "4", "address": "10.0.0.5/32", "interface": 0}]});
        let conf = parse(json!({"cniVersion": "1.0.0", "name": "n", "prevResult": prev})).unwrap();
        assert_eq!(
            conf.prev_result.unwrap().ips[0].address.to_string(),
            "10.0.0.5/32"
        );
        let bad =
            json!({"cniVersion": "1.0.0", "name": "n", "prevResult": {"ips": [{"address": "x"}]}});
        assert!(matches!(parse(bad), Err(ConfError::PrevResult(_))));
    }

    #[test]
    fn gc_attachment_keys() {
        let a = json!([{"containerID": "c-a", "ifname": "eth0"}]);
        let b = json!([{"containerID": "c-b", "ifname": "eth0"}, {"containerID": "c-a", "ifname": "eth0"}]);
        let both = json!({"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": a,
                          "cni.dev/attachments": b});
        assert_eq!(parse(both).unwrap().valid_attachments.unwrap().len(), 2);
        let old = json!({"cniVersion": "1.1.0", "name": "n", "cni.dev/attachments": a});
        assert_eq!(
            parse(old).unwrap().valid_attachments.unwrap()[0].container_id,
            "c-a"
        );
        let null = json!({"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": null});
        assert_eq!(parse(null).unwrap().valid_attachments, Some(vec![]));
    }
}
