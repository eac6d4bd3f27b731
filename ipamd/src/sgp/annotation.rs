//! The `vpc.amazonaws.com/pod-eni` pod annotation: which branch ENI a pod got and how the node
//! reaches it (VLAN id on the trunk, MAC, address, subnet).
//!
//! The value is a JSON array of objects with the VPC Resource Controller's field names. Readers
//! must also take `vlanID`, the spelling aws-node reads (Go matches JSON keys without regard to
//! case), and ignore fields they do not know. Every entry is validated before anything uses
//! it: a VLAN id builds a link name and a route table number, so a wrong one must never get
//! that far.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use super::vlan::MAX_VLAN_ID;

pub const POD_ENI_ANNOTATION: &str = "vpc.amazonaws.com/pod-eni";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AnnotationError {
    #[error("pod-eni annotation is not a json array of objects: {0}")]
    Json(String),
    #[error("pod-eni annotation lists {0} branch enis, expected exactly one")]
    Count(usize),
    #[error("pod-eni annotation entry {index}: {error}")]
    Entry { index: usize, error: EntryError },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("vlanId {0} is not an integer")]
    VlanNotInteger(String),
    #[error("vlanId {0} is outside 1..=4094")]
    VlanOutOfRange(String),
    #[error("vlanId {vlan} is above the trunk's highest id {max}")]
    VlanBeyondTrunk { vlan: u16, max: u16 },
    #[error("eniId {0} is not an eni id")]
    EniId(String),
    #[error("ifAddress {0} is not a unicast mac address")]
    Mac(String),
    #[error("{field} {value} is not a valid address")]
    Address { field: &'static str, value: String },
    #[error("{field} {value} is not a valid subnet")]
    Subnet { field: &'static str, value: String },
    #[error("privateIp {ip} is outside subnetCidr {subnet}")]
    OutsideSubnet { ip: Ipv4Addr, subnet: Ipv4Net },
}

/// One validated entry of the annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchEni {
    pub eni_id: String,
    /// Lower case, colon separated.
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub vlan_id: u16,
    pub subnet: Ipv4Net,
    pub subnet_v6: Option<Ipv6Net>,
    pub association_id: Option<String>,
}

impl BranchEni {
    /// The VPC router's address in the branch's subnet: the network address plus one.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }
}

/// The annotation as written: every key optional so a missing one gets a precise error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    eni_id: Option<String>,
    if_address: Option<String>,
    private_ip: Option<String>,
    ipv6_addr: Option<String>,
    #[serde(alias = "vlanID")]
    vlan_id: Option<Value>,
    subnet_cidr: Option<String>,
    subnet_v6_cidr: Option<String>,
    #[serde(rename = "associationID", alias = "associationId")]
    association_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireEntry<'a> {
    eni_id: &'a str,
    if_address: &'a str,
    private_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6_addr: Option<String>,
    vlan_id: u16,
    subnet_cidr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subnet_v6_cidr: Option<String>,
    #[serde(rename = "associationID", skip_serializing_if = "Option::is_none")]
    association_id: Option<&'a str>,
}

/// Reads and validates every entry; `trunk_max_vlan` is the highest id this node's trunk uses
/// (see `vlan::trunk_max`).
pub fn parse(value: &str, trunk_max_vlan: u16) -> Result<Vec<BranchEni>, AnnotationError> {
    let raw: Vec<RawEntry> =
        serde_json::from_str(value).map_err(|e| AnnotationError::Json(e.to_string()))?;
    raw.into_iter()
        .enumerate()
        .map(|(index, entry)| {
            validate(entry, trunk_max_vlan).map_err(|error| AnnotationError::Entry { index, error })
        })
        .collect()
}

/// The pod's one branch ENI; a pod asks for exactly one, so any other count is refused rather
/// than guessed at.
pub fn parse_single(value: &str, trunk_max_vlan: u16) -> Result<BranchEni, AnnotationError> {
    let mut entries = parse(value, trunk_max_vlan)?;
    if entries.len() != 1 {
        return Err(AnnotationError::Count(entries.len()));
    }
    Ok(entries.remove(0))
}

/// The annotation value for `entries`, with the controller's field names.
pub fn render(entries: &[BranchEni]) -> String {
    let wire: Vec<WireEntry> = entries
        .iter()
        .map(|e| WireEntry {
            eni_id: &e.eni_id,
            if_address: &e.mac,
            private_ip: e.private_ip.to_string(),
            ipv6_addr: e.ipv6.map(|ip| ip.to_string()),
            vlan_id: e.vlan_id,
            subnet_cidr: e.subnet.to_string(),
            subnet_v6_cidr: e.subnet_v6.map(|n| n.to_string()),
            association_id: e.association_id.as_deref(),
        })
        .collect();
    serde_json::to_string(&wire).expect("annotation entries always serialize")
}

fn validate(raw: RawEntry, trunk_max_vlan: u16) -> Result<BranchEni, EntryError> {
    let vlan_id = vlan_id(raw.vlan_id.ok_or(EntryError::Missing("vlanId"))?)?;
    if vlan_id > trunk_max_vlan {
        return Err(EntryError::VlanBeyondTrunk {
            vlan: vlan_id,
            max: trunk_max_vlan,
        });
    }
    let eni_id = eni_id(required(raw.eni_id, "eniId")?)?;
    let mac = mac(&required(raw.if_address, "ifAddress")?)?;
    let private_ip: Ipv4Addr = parse_address(required(raw.private_ip, "privateIp")?, "privateIp")?;
    let subnet: Ipv4Net = parse_subnet(required(raw.subnet_cidr, "subnetCidr")?, "subnetCidr")?;
    if !subnet.contains(&private_ip) {
        return Err(EntryError::OutsideSubnet {
            ip: private_ip,
            subnet,
        });
    }
    Ok(BranchEni {
        eni_id,
        mac,
        private_ip,
        ipv6: optional(raw.ipv6_addr)
            .map(|v| parse_address(v, "ipv6Addr"))
            .transpose()?,
        vlan_id,
        subnet,
        subnet_v6: optional(raw.subnet_v6_cidr)
            .map(|v| parse_subnet(v, "subnetV6Cidr"))
            .transpose()?,
        association_id: optional(raw.association_id),
    })
}

/// The controller writes empty strings for values it does not have.
fn optional(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn required(value: Option<String>, field: &'static str) -> Result<String, EntryError> {
    optional(value).ok_or(EntryError::Missing(field))
}

/// Only a JSON integer is taken: the controller writes a number, and a string or a fraction
/// means someone else wrote the annotation.
fn vlan_id(value: Value) -> Result<u16, EntryError> {
    let text = value.to_string();
    let Value::Number(number) = value else {
        return Err(EntryError::VlanNotInteger(text));
    };
    let Some(id) = number.as_i64() else {
        return Err(if number.is_u64() {
            EntryError::VlanOutOfRange(text)
        } else {
            EntryError::VlanNotInteger(text)
        });
    };
    match u16::try_from(id) {
        Ok(id) if (1..=MAX_VLAN_ID).contains(&id) => Ok(id),
        _ => Err(EntryError::VlanOutOfRange(text)),
    }
}

fn eni_id(value: String) -> Result<String, EntryError> {
    let hex = value.strip_prefix("eni-").unwrap_or_default();
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EntryError::EniId(value));
    }
    Ok(value)
}

fn mac(value: &str) -> Result<String, EntryError> {
    let octets: Vec<Option<u8>> = value
        .split(':')
        .map(|o| {
            (o.len() == 2)
                .then(|| u8::from_str_radix(o, 16).ok())
                .flatten()
        })
        .collect();
    let valid = octets.len() == 6 && octets.iter().all(Option::is_some);
    // A link cannot take a multicast or all-zero address (the kernel answers EADDRNOTAVAIL).
    let unicast = valid && octets[0].is_some_and(|b| b & 1 == 0);
    let zero = octets.iter().all(|o| *o == Some(0));
    if !unicast || zero {
        return Err(EntryError::Mac(value.to_string()));
    }
    Ok(value.to_ascii_lowercase())
}

fn parse_address<T: FromStr>(value: String, field: &'static str) -> Result<T, EntryError> {
    value
        .parse()
        .map_err(|_| EntryError::Address { field, value })
}

fn parse_subnet<T: FromStr>(value: String, field: &'static str) -> Result<T, EntryError> {
    value
        .parse()
        .map_err(|_| EntryError::Subnet { field, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(vlan: Value) -> Value {
        json!({
            "eniId": "eni-05fe0123456789abc",
            "ifAddress": "06:74:5B:7b:54:3a",
            "privateIp": "10.0.1.20",
            "vlanId": vlan,
            "subnetCidr": "10.0.1.0/24",
            "associationID": "trunk-assoc-0123456789abcdef0"
        })
    }

    fn one(value: Value) -> Result<BranchEni, AnnotationError> {
        parse_single(&Value::Array(vec![value]).to_string(), 120)
    }

    fn entry_error(value: Value) -> EntryError {
        match one(value) {
            Err(AnnotationError::Entry { index: 0, error }) => error,
            other => panic!("expected an entry error, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_controller_annotation() {
        let eni = one(entry(json!(3))).unwrap();
        assert_eq!(eni.eni_id, "eni-05fe0123456789abc");
        assert_eq!(eni.mac, "06:74:5b:7b:54:3a");
        assert_eq!(eni.private_ip, Ipv4Addr::new(10, 0, 1, 20));
        assert_eq!(eni.vlan_id, 3);
        assert_eq!(eni.subnet.to_string(), "10.0.1.0/24");
        assert_eq!(eni.gateway(), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(
            eni.association_id.as_deref(),
            Some("trunk-assoc-0123456789abcdef0")
        );
        assert_eq!(eni.ipv6, None);
    }

    #[test]
    fn reads_older_annotation_and_ignores_unknown_fields() {
        // Older controllers wrote neither associationID nor the IPv6 fields; newer ones may
        // add fields this reader has never heard of.
        let text = r#"[{"eniId":"eni-05fe","ifAddress":"06:74:5b:7b:54:3a",
            "privateIp":"10.105.49.186","vlanID":2,"subnetCidr":"10.105.49.128/26",
            "ipv6Addr":"","subnetV6Cidr":"","futureField":{"x":1}}]"#;
        let eni = parse_single(text, 9).unwrap();
        assert_eq!(eni.vlan_id, 2);
        assert_eq!(eni.association_id, None);
        assert_eq!(eni.subnet_v6, None);
        assert_eq!(eni.gateway(), Ipv4Addr::new(10, 105, 49, 129));
    }

    #[test]
    fn reads_ipv6_fields() {
        let mut v = entry(json!(1));
        v["ipv6Addr"] = json!("2600:1f14::5");
        v["subnetV6Cidr"] = json!("2600:1f14::/64");
        let eni = one(v).unwrap();
        assert_eq!(eni.ipv6, Some("2600:1f14::5".parse().unwrap()));
        assert_eq!(eni.subnet_v6, Some("2600:1f14::/64".parse().unwrap()));
    }

    #[test]
    fn render_uses_controller_names_and_round_trips() {
        let eni = one(entry(json!(7))).unwrap();
        let text = render(std::slice::from_ref(&eni));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v[0]["vlanId"], json!(7));
        assert_eq!(v[0]["ifAddress"], json!("06:74:5b:7b:54:3a"));
        assert_eq!(
            v[0]["associationID"],
            json!("trunk-assoc-0123456789abcdef0")
        );
        assert!(v[0].get("vlanID").is_none());
        assert!(v[0].get("ipv6Addr").is_none());
        assert_eq!(parse_single(&text, 120).unwrap(), eni);
    }

    #[test]
    fn vlan_ids_that_are_not_1_to_4094_integers_are_rejected() {
        let cases = [
            (json!(0), EntryError::VlanOutOfRange("0".into())),
            (json!(4095), EntryError::VlanOutOfRange("4095".into())),
            (json!(4096), EntryError::VlanOutOfRange("4096".into())),
            (json!(-1), EntryError::VlanOutOfRange("-1".into())),
            (
                json!(u64::MAX),
                EntryError::VlanOutOfRange(u64::MAX.to_string()),
            ),
            (json!(1.5), EntryError::VlanNotInteger("1.5".into())),
            (json!("2"), EntryError::VlanNotInteger("\"2\"".into())),
            (json!(null), EntryError::Missing("vlanId")),
            (json!(true), EntryError::VlanNotInteger("true".into())),
        ];
        for (vlan, want) in cases {
            assert_eq!(entry_error(entry(vlan.clone())), want, "vlanId {vlan}");
        }
    }

    #[test]
    fn missing_vlan_id_is_rejected() {
        let mut v = entry(json!(1));
        v.as_object_mut().unwrap().remove("vlanId");
        assert_eq!(entry_error(v), EntryError::Missing("vlanId"));
    }

    #[test]
    fn vlan_above_the_trunk_range_is_rejected() {
        let text = Value::Array(vec![entry(json!(10))]).to_string();
        let err = parse_single(&text, 9).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod-eni annotation entry 0: vlanId 10 is above the trunk's highest id 9"
        );
        assert_eq!(parse_single(&text, 10).unwrap().vlan_id, 10);
    }

    #[test]
    fn both_vlan_spellings_at_once_are_rejected() {
        let mut v = entry(json!(1));
        v["vlanID"] = json!(1);
        assert!(matches!(one(v), Err(AnnotationError::Json(_))));
    }

    #[test]
    fn entry_count_must_be_one() {
        let two = Value::Array(vec![entry(json!(1)), entry(json!(2))]).to_string();
        assert_eq!(parse_single(&two, 120), Err(AnnotationError::Count(2)));
        assert_eq!(parse(&two, 120).unwrap().len(), 2);
        assert_eq!(parse_single("[]", 120), Err(AnnotationError::Count(0)));
    }

    #[test]
    fn second_entry_errors_name_their_index() {
        let text = Value::Array(vec![entry(json!(1)), entry(json!(0))]).to_string();
        assert_eq!(
            parse(&text, 120).unwrap_err().to_string(),
            "pod-eni annotation entry 1: vlanId 0 is outside 1..=4094"
        );
    }

    #[test]
    fn non_json_and_non_array_are_rejected() {
        for text in ["", "vlan=3", "{}", r#"{"vlanId":1}"#, "[1]", "null"] {
            assert!(
                matches!(parse(text, 120), Err(AnnotationError::Json(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn macs_must_be_six_unicast_octets() {
        let bad = [
            "06:74:5b:7b:54",
            "06:74:5b:7b:54:3a:00",
            "06-74-5b-7b-54-3a",
            "06:74:5b:7b:54:zz",
            "6:74:5b:7b:54:3a",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ];
        for m in bad {
            let mut v = entry(json!(1));
            v["ifAddress"] = json!(m);
            assert_eq!(entry_error(v), EntryError::Mac(m.into()), "{m}");
        }
    }

    #[test]
    fn addresses_and_subnets_must_parse_and_agree() {
        let mut v = entry(json!(1));
        v["privateIp"] = json!("10.0.1.300");
        assert!(matches!(
            entry_error(v),
            EntryError::Address {
                field: "privateIp",
                ..
            }
        ));

        let mut v = entry(json!(1));
        v["subnetCidr"] = json!("10.0.1.0");
        assert!(matches!(
            entry_error(v),
            EntryError::Subnet {
                field: "subnetCidr",
                ..
            }
        ));

        let mut v = entry(json!(1));
        v["subnetCidr"] = json!("10.0.2.0/24");
        assert_eq!(
            entry_error(v).to_string(),
            "privateIp 10.0.1.20 is outside subnetCidr 10.0.2.0/24"
        );

        let mut v = entry(json!(1));
        v["ipv6Addr"] = json!("not-v6");
        assert!(matches!(
            entry_error(v),
            EntryError::Address {
                field: "ipv6Addr",
                ..
            }
        ));
    }

    #[test]
    fn required_fields_are_named_when_missing_or_empty() {
        for field in ["eniId", "ifAddress", "privateIp", "subnetCidr"] {
            let mut v = entry(json!(1));
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(entry_error(v), EntryError::Missing(field));
            let mut v = entry(json!(1));
            v[field] = json!("");
            assert_eq!(entry_error(v), EntryError::Missing(field));
        }
    }

    #[test]
    fn eni_ids_are_checked() {
        for id in ["eni-", "eni-xyz", "vol-0123", "ENI-0123"] {
            let mut v = entry(json!(1));
            v["eniId"] = json!(id);
            assert_eq!(entry_error(v), EntryError::EniId(id.into()), "{id}");
        }
    }
}
