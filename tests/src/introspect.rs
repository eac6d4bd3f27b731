//! Reading ipamd's introspection document (`/v1/enis`), which keeps aws-node's shape: per
//! network card, `ENIs` by id, each with `IPv4Addresses`/`AvailableIPv4Cidrs` holding address
//! records whose `IPAMKey` is set while a pod holds them.

use serde_json::Value;

fn enis_of(doc: &Value) -> Vec<(&String, &Value)> {
    let mut out = Vec::new();
    if let Some(cards) = doc.as_object() {
        for card in cards.values() {
            if let Some(enis) = card["ENIs"].as_object() {
                out.extend(enis.iter());
            }
        }
    }
    out
}

fn key_is_set(key: &Value) -> bool {
    match key {
        Value::Object(m) => m
            .values()
            .any(|v| v.as_str().is_some_and(|s| !s.is_empty())),
        Value::String(s) => !s.is_empty(),
        _ => false,
    }
}

/// Calls `f(address, assigned)` for every address record of every ENI.
pub fn visit_addresses(doc: &Value, f: &mut dyn FnMut(&str, bool)) {
    for (_, eni) in enis_of(doc) {
        visit_eni(eni, f);
    }
}

fn visit_eni(eni: &Value, f: &mut dyn FnMut(&str, bool)) {
    let Some(cidrs) = eni["AvailableIPv4Cidrs"].as_object() else {
        return;
    };
    for cidr in cidrs.values() {
        let Some(addrs) = cidr["IPAddresses"].as_object() else {
            continue;
        };
        for (addr, rec) in addrs {
            f(addr, key_is_set(&rec["IPAMKey"]));
        }
    }
}

pub fn eni_ids(doc: &Value) -> Vec<String> {
    enis_of(doc).into_iter().map(|(id, _)| id.clone()).collect()
}

/// (assigned address, ENI id) pairs.
pub fn ip_owners(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (id, eni) in enis_of(doc) {
        visit_eni(eni, &mut |addr, assigned| {
            if assigned {
                out.push((addr.to_string(), id.clone()));
            }
        });
    }
    out
}
