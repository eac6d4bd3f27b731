//! The parameters of one Query API request: `Action=..&Version=..&Name.1=..` from the form body
//! (and the query string, which EC2 also accepts).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::error::Ec2Error;
use super::filter::Filter;

pub const API_VERSION: &str = "2016-11-15";

#[derive(Debug, Clone, Default)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    /// Merges url-encoded pairs from every source; a later source wins on the same key.
    pub fn parse(sources: &[&[u8]]) -> Self {
        let mut map = BTreeMap::new();
        for source in sources {
            for (key, value) in form_urlencoded::parse(source) {
                map.insert(key.into_owned(), value.into_owned());
            }
        }
        Self { map }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let map = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self { map }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    pub fn required(&self, key: &str) -> Result<&str, Ec2Error> {
        match self.get(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Ec2Error::missing(key)),
        }
    }

    pub fn action(&self) -> Result<&str, Ec2Error> {
        self.get("Action")
            .filter(|a| !a.is_empty())
            .ok_or_else(|| Ec2Error::new("MissingAction", "the request must contain an Action"))
    }

    pub fn parsed<T: FromStr>(&self, key: &str) -> Result<Option<T>, Ec2Error> {
        self.get(key)
            .map(|raw| {
                raw.parse().map_err(|_| {
                    Ec2Error::invalid_value(format!("value '{raw}' for parameter {key} is invalid"))
                })
            })
            .transpose()
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, Ec2Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(Ec2Error::invalid_value(format!(
                "value '{v}' for parameter {key} is not a boolean"
            ))),
        }
    }

    /// The indices N present under `prefix.N` or `prefix.N.*`, in numeric order.
    pub fn indices(&self, prefix: &str) -> BTreeSet<u32> {
        let head = format!("{prefix}.");
        self.map
            .range(head.clone()..)
            .take_while(|(k, _)| k.starts_with(&head))
            .filter_map(|(k, _)| k[head.len()..].split('.').next()?.parse().ok())
            .collect()
    }

    /// The values of the flat list `prefix.1`, `prefix.2`, ... in index order.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.indices(prefix)
            .into_iter()
            .filter_map(|n| self.get(&format!("{prefix}.{n}")).map(str::to_string))
            .collect()
    }

    pub fn ip_list(&self, prefix: &str) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        self.list(prefix)
            .iter()
            .map(|raw| {
                raw.parse().map_err(|_| {
                    Ec2Error::invalid_value(format!("'{raw}' in {prefix} is not an IPv4 address"))
                })
            })
            .collect()
    }

    /// `Filter.N.Name` with `Filter.N.Value.M`.
    pub fn filters(&self) -> Result<Vec<Filter>, Ec2Error> {
        self.indices("Filter")
            .into_iter()
            .map(|n| {
                let name = self.required(&format!("Filter.{n}.Name"))?.to_string();
                let values = self.list(&format!("Filter.{n}.Value"));
                Ok(Filter { name, values })
            })
            .collect()
    }

    /// `{prefix}.N.Key` with an optional `{prefix}.N.Value`.
    pub fn tags(&self, prefix: &str) -> Result<Vec<(String, Option<String>)>, Ec2Error> {
        self.indices(prefix)
            .into_iter()
            .map(|n| {
                let key = self.required(&format!("{prefix}.{n}.Key"))?.to_string();
                let value = self.get(&format!("{prefix}.{n}.Value")).map(str::to_string);
                Ok((key, value))
            })
            .collect()
    }

    /// Tags from `TagSpecification.N` whose ResourceType is `resource_type`.
    pub fn tag_specifications(
        &self,
        resource_type: &str,
    ) -> Result<BTreeMap<String, String>, Ec2Error> {
        let mut tags = BTreeMap::new();
        for n in self.indices("TagSpecification") {
            let spec = format!("TagSpecification.{n}");
            let kind = self.required(&format!("{spec}.ResourceType"))?;
            if kind != resource_type {
                return Err(Ec2Error::invalid_value(format!(
                    "'{kind}' is not a valid taggable resource type for this operation"
                )));
            }
            for (key, value) in self.tags(&format!("{spec}.Tag"))? {
                tags.insert(key, value.unwrap_or_default());
            }
        }
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_in_numeric_order() {
        let p = Params::parse(&[
            b"Action=X&SecurityGroupId.10=sg-c&SecurityGroupId.2=sg-b&SecurityGroupId.1=sg-a",
        ]);
        assert_eq!(p.action().unwrap(), "X");
        assert_eq!(p.list("SecurityGroupId"), ["sg-a", "sg-b", "sg-c"]);
        assert!(p.list("PrivateIpAddress").is_empty());
    }

    #[test]
    fn parses_filters_and_tag_specifications() {
        let p = Params::parse(&[
            b"Filter.1.Name=tag%3Afoo&Filter.1.Value.1=a&Filter.1.Value.2=b&\
              Filter.2.Name=status&Filter.2.Value.1=available&\
              TagSpecification.1.ResourceType=network-interface&\
              TagSpecification.1.Tag.1.Key=k1&TagSpecification.1.Tag.1.Value=v1&\
              TagSpecification.1.Tag.2.Key=k2",
        ]);
        let filters = p.filters().unwrap();
        assert_eq!(filters[0].name, "tag:foo");
        assert_eq!(filters[0].values, ["a", "b"]);
        assert_eq!(filters[1].name, "status");
        let tags = p.tag_specifications("network-interface").unwrap();
        assert_eq!(tags["k1"], "v1");
        assert_eq!(tags["k2"], "");
        assert!(p.tag_specifications("instance").is_err());
    }

    #[test]
    fn typed_values_are_validated() {
        let p = Params::from_pairs([("Count", "x"), ("Flag", "TRUE"), ("Ip.1", "10.0.0.300")]);
        assert_eq!(
            p.parsed::<u32>("Count").unwrap_err().code,
            "InvalidParameterValue"
        );
        assert_eq!(p.bool("Flag").unwrap(), Some(true));
        assert!(p.ip_list("Ip").is_err());
        assert_eq!(p.required("Missing").unwrap_err().code, "MissingParameter");
    }
}
