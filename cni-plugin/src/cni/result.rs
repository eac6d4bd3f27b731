//! The CNI result in one in-memory form, read from and written to every supported schema.
//!
//! 0.3.x/0.4.0 and 1.x differ in `ips[].version` (only before 1.0.0); 1.1.0 adds optional
//! interface (`mtu`, `socketPath`, `pciID`) and route (`mtu`, `advmss`, `priority`, `table`,
//! `scope`) fields, which older schemas drop on output.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::version::{Schema, Version};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub sandbox: String,
    #[serde(default)]
    pub socket_path: String,
    #[serde(default, rename = "pciID")]
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub advmss: Option<u32>,
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default)]
    pub table: Option<u32>,
    #[serde(default)]
    pub scope: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("result cniVersion: {0}")]
    Version(#[from] super::version::ParseError),
    #[error("result version {0} has a layout this plugin does not read")]
    Schema(Version),
    #[error("result: {0}")]
    Json(#[from] serde_json::Error),
    #[error("result ips[{index}]: version {declared:?} does not match address {address}")]
    IpVersion {
        index: usize,
        declared: String,
        address: IpNet,
    },
    #[error("result ips[{index}]: interface {interface} is out of range")]
    InterfaceIndex { index: usize, interface: usize },
}

/// Shape shared by every supported schema on input; version-specific checks follow.
#[derive(Deserialize)]
struct RawResult {
    #[serde(default, rename = "cniVersion")]
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Option<Vec<Interface>>,
    #[serde(default)]
    ips: Option<Vec<RawIp>>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    dns: Option<Dns>,
}

#[derive(Deserialize)]
struct RawIp {
    #[serde(default)]
    version: Option<String>,
    address: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

impl CniResult {
    /// Decodes a result by the `cniVersion` it carries; `fallback` is used when it has none
    /// (runtimes that cached results without a version).
    pub fn decode(value: &Value, fallback: Version) -> Result<(CniResult, Version), ResultError> {
        let raw: RawResult = serde_json::from_value(value.clone())?;
        let version = match raw.cni_version.as_deref() {
            Some(v) if !v.is_empty() => v.parse()?,
            _ => fallback,
        };
        let schema = version.schema().ok_or(ResultError::Schema(version))?;
        let result = CniResult {
            interfaces: raw.interfaces.unwrap_or_default(),
            ips: decode_ips(raw.ips.unwrap_or_default(), schema)?,
            routes: raw.routes.unwrap_or_default(),
            dns: raw.dns.unwrap_or_default(),
        };
        result.check_indexes()?;
        Ok((result, version))
    }

    fn check_indexes(&self) -> Result<(), ResultError> {
        for (index, ip) in self.ips.iter().enumerate() {
            match ip.interface {
                Some(interface) if interface >= self.interfaces.len() => {
                    return Err(ResultError::InterfaceIndex { index, interface })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Encodes in the layout of `version`; fields the version does not know are left out.
    pub fn encode(&self, version: Version) -> Value {
        let schema = version.schema().unwrap_or(Schema::V10);
        let newest = version >= Version::new(1, 1, 0);
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.to_string()));
        if !self.interfaces.is_empty() {
            let ifaces = self
                .interfaces
                .iter()
                .map(|i| encode_interface(i, newest))
                .collect();
            out.insert("interfaces".into(), Value::Array(ifaces));
        }
        let ips = self.ips.iter().map(|ip| encode_ip(ip, schema)).collect();
        out.insert("ips".into(), Value::Array(ips));
        if !self.routes.is_empty() {
            let routes = self
                .routes
                .iter()
                .map(|r| encode_route(r, newest))
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        if self.dns != Dns::default() {
            out.insert("dns".into(), json!(self.dns));
        }
        Value::Object(out)
    }

    /// Appends `other` (this plugin's own interfaces and IPs) after a previous plugin's
    /// result, shifting its interface indexes; DNS of the earlier result is kept.
    pub fn append(&mut self, other: CniResult) {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns == Dns::default() {
            self.dns = other.dns;
        }
    }
}

fn decode_ips(raw: Vec<RawIp>, schema: Schema) -> Result<Vec<IpConfig>, ResultError> {
    raw.into_iter()
        .enumerate()
        .map(|(index, ip)| {
            // 0.3.x/0.4.0 declare the family; a wrong one means the result is corrupt.
            if let (Schema::V03, Some(declared)) = (schema, &ip.version) {
                if declared != family_of(&ip.address) {
                    return Err(ResultError::IpVersion {
                        index,
                        declared: declared.clone(),
                        address: ip.address,
                    });
                }
            }
            Ok(IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface: ip.interface,
            })
        })
        .collect()
}

fn family_of(address: &IpNet) -> &'static str {
    match address {
        IpNet::V4(_) => "4",
        IpNet::V6(_) => "6",
    }
}

fn encode_interface(iface: &Interface, newest: bool) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(iface.name));
    put_str(&mut out, "mac", &iface.mac);
    if newest {
        if let Some(mtu) = iface.mtu {
            out.insert("mtu".into(), json!(mtu));
        }
    }
    put_str(&mut out, "sandbox", &iface.sandbox);
    if newest {
        put_str(&mut out, "socketPath", &iface.socket_path);
        put_str(&mut out, "pciID", &iface.pci_id);
    }
    Value::Object(out)
}

fn encode_ip(ip: &IpConfig, schema: Schema) -> Value {
    let mut out = Map::new();
    if schema == Schema::V03 {
        out.insert("version".into(), json!(family_of(&ip.address)));
    }
    out.insert("address".into(), json!(ip.address.to_string()));
    if let Some(gw) = ip.gateway {
        out.insert("gateway".into(), json!(gw.to_string()));
    }
    if let Some(index) = ip.interface {
        out.insert("interface".into(), json!(index));
    }
    Value::Object(out)
}

fn encode_route(route: &Route, newest: bool) -> Value {
    let mut out = Map::new();
    out.insert("dst".into(), json!(route.dst.to_string()));
    if let Some(gw) = route.gw {
        out.insert("gw".into(), json!(gw.to_string()));
    }
    if newest {
        let extra = [
            ("mtu", route.mtu),
            ("advmss", route.advmss),
            ("priority", route.priority),
            ("table", route.table),
            ("scope", route.scope),
        ];
        for (key, value) in extra {
            if let Some(v) = value {
                out.insert(key.into(), json!(v));
            }
        }
    }
    Value::Object(out)
}

fn put_str(out: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        out.insert(key.into(), json!(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "enic440f455693".into(),
                    mac: "0a:58:00:00:00:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:00:00:00:02".into(),
                    mtu: Some(9001),
                    sandbox: "/var/run/netns/t1".into(),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.0.0.21/32".parse().unwrap(),
                gateway: None,
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
                mtu: None,
                advmss: None,
                priority: None,
                table: Some(254),
                scope: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_schemas_carry_ip_version_new_ones_do_not() {
        let r = sample();
        for (ver, has) in [
            ("0.3.1", true),
            ("0.4.0", true),
            ("1.0.0", false),
            ("1.1.0", false),
        ] {
            let out = r.encode(v(ver));
            assert_eq!(out["cniVersion"], ver);
            assert_eq!(out["ips"][0].get("version").is_some(), has, "{ver}");
            assert_eq!(out["ips"][0]["interface"], 1);
        }
    }

    #[test]
    fn fields_new_in_1_1_are_dropped_for_older_versions() {
        let r = sample();
        let new = r.encode(v("1.1.0"));
        assert_eq!(new["interfaces"][1]["mtu"], 9001);
        assert_eq!(new["routes"][0]["table"], 254);
        let old = r.encode(v("1.0.0"));
        assert!(old["interfaces"][1].get("mtu").is_none());
        assert!(old["routes"][0].get("table").is_none());
        assert_eq!(old["routes"][0]["gw"], "169.254.1.1");
    }

    #[test]
    fn round_trip_through_every_version() {
        let r = sample();
        for ver in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let (back, got) = CniResult::decode(&r.encode(v(ver)), v("1.1.0")).unwrap();
            assert_eq!(got, v(ver));
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.interfaces[1].sandbox, r.interfaces[1].sandbox);
        }
    }

    #[test]
    fn prev_result_is_decoded_by_its_own_version() {
        let prev = json!({"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                          "ips": [{"version": "4", "address": "10.0.0.9/32", "interface": 0}]});
        let (r, ver) = CniResult::decode(&prev, v("1.0.0")).unwrap();
        assert_eq!(ver, v("0.4.0"));
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.9/32");
        let out = r.encode(v("1.0.0"));
        assert!(out["ips"][0].get("version").is_none());
    }

    #[test]
    fn missing_version_uses_fallback() {
        let prev = json!({"ips": [{"address": "10.0.0.9/32"}]});
        let (_, ver) = CniResult::decode(&prev, v("0.4.0")).unwrap();
        assert_eq!(ver, v("0.4.0"));
    }

    #[test]
    fn corrupt_results_are_rejected() {
        let wrong_family = json!({"cniVersion": "0.4.0",
                                  "ips": [{"version": "6", "address": "10.0.0.9/32"}]});
        assert!(matches!(
            CniResult::decode(&wrong_family, v("0.4.0")),
            Err(ResultError::IpVersion { .. })
        ));
        let bad_index = json!({"cniVersion": "1.0.0", "interfaces": [],
                               "ips": [{"address": "10.0.0.9/32", "interface": 2}]});
        assert!(matches!(
            CniResult::decode(&bad_index, v("1.0.0")),
            Err(ResultError::InterfaceIndex { .. })
        ));
        let ancient = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.9/32"}});
        assert!(matches!(
            CniResult::decode(&ancient, v("1.0.0")),
            Err(ResultError::Schema(_))
        ));
    }

    #[test]
    fn append_shifts_interface_indexes() {
        let mut prev = CniResult {
            interfaces: vec![Interface {
                name: "other".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        prev.append(sample());
        assert_eq!(prev.interfaces.len(), 3);
        assert_eq!(prev.ips[0].interface, Some(2));
    }
}
