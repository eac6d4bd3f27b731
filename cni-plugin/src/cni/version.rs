//! CNI spec versions: the ones this plugin serves and the result schema each one uses.

use std::fmt;
use std::str::FromStr;

/// A CNI spec version, compared numerically ("0.10.0" > "0.4.0").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// Every version this binary implements fully: results in that version's schema, CHECK from
/// 0.4.0, STATUS and GC at 1.1.0. VERSION reports exactly this list.
pub const SUPPORTED: [Version; 4] = [
    Version::new(0, 3, 1),
    Version::new(0, 4, 0),
    Version::new(1, 0, 0),
    Version::new(1, 1, 0),
];

/// The newest supported version, used when the input names none (VERSION without stdin).
pub const LATEST: Version = Version::new(1, 1, 0);

/// CHECK and prevResult on DEL arrived with 0.4.0.
pub const CHECK_SINCE: Version = Version::new(0, 4, 0);

/// STATUS and GC arrived with 1.1.0.
pub const STATUS_GC_SINCE: Version = Version::new(1, 1, 0);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cni version {0:?}")]
pub struct ParseError(pub String);

/// Which JSON layout a result of a given version has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// 0.3.0 – 0.4.0: `ips[].version` present.
    V03,
    /// 1.0.0 and later 1.x: no `ips[].version`; 1.1.0 adds optional route and interface fields.
    V10,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    pub fn is_supported(self) -> bool {
        SUPPORTED.contains(&self)
    }

    /// The result layout for this version; None for pre-0.3.0 results (`ip4`/`ip6` objects),
    /// which this plugin neither writes nor reads.
    pub fn schema(self) -> Option<Schema> {
        match (self.major, self.minor) {
            (0, 3) | (0, 4) => Some(Schema::V03),
            (1, _) => Some(Schema::V10),
            _ => None,
        }
    }
}

impl FromStr for Version {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError(s.to_string());
        let mut parts = s.split('.');
        let mut next = || -> Result<u32, ParseError> {
            let part = parts.next().ok_or_else(bad)?;
            // Leading zeros and signs are not semver; reject them rather than guess.
            if part.is_empty() || (part.len() > 1 && part.starts_with('0')) {
                return Err(bad());
            }
            part.parse::<u32>().map_err(|_| bad())
        };
        let version = Version::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The supported list as strings, for VERSION output and error messages.
pub fn supported_strings() -> Vec<String> {
    SUPPORTED.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_numerically() {
        let a: Version = "0.4.0".parse().unwrap();
        let b: Version = "0.10.0".parse().unwrap();
        assert!(b > a);
        assert_eq!(a.to_string(), "0.4.0");
    }

    #[test]
    fn rejects_malformed_versions() {
        for bad in [
            "", "1", "1.0", "1.0.0.0", "v1.0.0", "1.x.0", "01.0.0", "1.0.-1",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn supported_list_is_exact() {
        assert_eq!(supported_strings(), ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        assert!(!Version::new(0, 3, 0).is_supported());
        assert!(!Version::new(1, 0, 1).is_supported());
        assert!(!Version::new(2, 0, 0).is_supported());
    }

    #[test]
    fn schema_by_version() {
        assert_eq!(Version::new(0, 3, 0).schema(), Some(Schema::V03));
        assert_eq!(Version::new(0, 4, 0).schema(), Some(Schema::V03));
        assert_eq!(Version::new(1, 1, 0).schema(), Some(Schema::V10));
        assert_eq!(Version::new(0, 2, 0).schema(), None);
    }
}
