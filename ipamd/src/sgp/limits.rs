//! How many branch ENIs a trunk may carry on each instance type.
//!
//! EC2 does not publish this through DescribeInstanceTypes; the VPC Resource Controller keeps a
//! table and the numbers here are the same. Burstable (t*) types and the Xen-based generations
//! cannot trunk at all. A type in neither list is unknown: security groups for pods stay off
//! there rather than guess.

/// What ipamd knows about an instance type's trunking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchLimit {
    /// Carries up to this many branch ENIs.
    Supported(u32),
    /// Can not have a trunk ENI.
    Unsupported,
    /// Not in the table.
    Unknown,
}

impl BranchLimit {
    /// The number of branch ENIs, 0 when there can be none.
    pub fn count(self) -> u32 {
        match self {
            BranchLimit::Supported(n) => n,
            BranchLimit::Unsupported | BranchLimit::Unknown => 0,
        }
    }
}

/// Families without trunking: burstable types and the Xen-based generations.
const NO_TRUNKING: &[&str] = &[
    "t1", "t2", "t3", "t3a", "t4g", "c1", "c3", "c4", "d2", "f1", "g2", "g3", "g3s", "h1", "i2",
    "m1", "m2", "m3", "m4", "p2", "p3", "r3", "r4", "x1", "x1e",
];

/// (family, [(size, branch ENIs)]) for the families most clusters run on.
#[rustfmt::skip]
const TABLE: &[(&str, &[(&str, u32)])] = &[
    ("c5", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("9xlarge", 54),
        ("12xlarge", 54), ("18xlarge", 107), ("24xlarge", 107), ("metal", 107)]),
    ("c5a", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107)]),
    ("c5ad", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107)]),
    ("c5d", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("9xlarge", 54),
        ("12xlarge", 54), ("18xlarge", 107), ("24xlarge", 107), ("metal", 107)]),
    ("c5n", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("9xlarge", 54),
        ("18xlarge", 107), ("metal", 107)]),
    ("c6a", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 107),
        ("48xlarge", 107), ("metal", 107)]),
    ("c6g", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("c6gd", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("c6gn", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107)]),
    ("c6i", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 107), ("metal", 107)]),
    ("c6id", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 107), ("metal", 107)]),
    ("c6in", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 106), ("metal", 106)]),
    ("c7a", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 84), ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107),
        ("32xlarge", 107), ("48xlarge", 107), ("metal-48xl", 107)]),
    ("c7g", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("c7gd", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("c7gn", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("c7i", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("48xlarge", 107),
        ("metal-24xl", 107), ("metal-48xl", 107)]),
    ("m5", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107), ("metal", 120)]),
    ("m5a", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107)]),
    ("m5ad", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107)]),
    ("m5d", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107), ("metal", 107)]),
    ("m5dn", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107), ("metal", 107)]),
    ("m5n", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107), ("metal", 107)]),
    ("m5zn", &[("large", 13), ("xlarge", 29), ("2xlarge", 62), ("3xlarge", 92), ("6xlarge", 114),
        ("12xlarge", 107), ("metal", 107)]),
    ("m6a", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 107),
        ("48xlarge", 107), ("metal", 107)]),
    ("m6g", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("m6gd", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("m6i", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 107), ("metal", 107)]),
    ("m6id", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 107), ("metal", 107)]),
    ("m6idn", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 106), ("metal", 106)]),
    ("m6in", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 106), ("metal", 106)]),
    ("m7a", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 84), ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107),
        ("32xlarge", 107), ("48xlarge", 107), ("metal-48xl", 107)]),
    ("m7g", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("m7gd", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("m7i", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("48xlarge", 107),
        ("metal-24xl", 107), ("metal-48xl", 107)]),
    ("r5", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107), ("metal", 120)]),
    ("r5a", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107)]),
    ("r5ad", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107)]),
    ("r5b", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107), ("metal", 107)]),
    ("r5d", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107), ("metal", 107)]),
    ("r5dn", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107), ("metal", 107)]),
    ("r5n", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 54),
        ("12xlarge", 54), ("16xlarge", 107), ("24xlarge", 107), ("metal", 107)]),
    ("r6a", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 107),
        ("48xlarge", 107), ("metal", 107)]),
    ("r6g", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("r6gd", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("r6i", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 107), ("metal", 107)]),
    ("r6id", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 107), ("metal", 107)]),
    ("r6idn", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 106), ("metal", 106)]),
    ("r6in", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("32xlarge", 106), ("metal", 106)]),
    ("r7a", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 84), ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107),
        ("32xlarge", 107), ("48xlarge", 107), ("metal-48xl", 107)]),
    ("r7g", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("r7gd", &[("medium", 4), ("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54),
        ("8xlarge", 54), ("12xlarge", 54), ("16xlarge", 107), ("metal", 107)]),
    ("r7i", &[("large", 9), ("xlarge", 18), ("2xlarge", 38), ("4xlarge", 54), ("8xlarge", 84),
        ("12xlarge", 114), ("16xlarge", 107), ("24xlarge", 107), ("48xlarge", 107),
        ("metal-24xl", 107), ("metal-48xl", 107)]),
];

pub fn branch_limit(instance_type: &str) -> BranchLimit {
    let Some((family, size)) = instance_type.split_once('.') else {
        return BranchLimit::Unknown;
    };
    if NO_TRUNKING.contains(&family) {
        return BranchLimit::Unsupported;
    }
    TABLE
        .iter()
        .find(|(f, _)| *f == family)
        .and_then(|(_, sizes)| sizes.iter().find(|(s, _)| *s == size))
        .map_or(BranchLimit::Unknown, |(_, n)| BranchLimit::Supported(*n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_limits() {
        for (name, want) in [
            ("m5.large", 9),
            ("m5.xlarge", 18),
            ("m5.2xlarge", 38),
            ("m5.4xlarge", 54),
            ("c5.large", 9),
            ("c5.4xlarge", 54),
            ("m5.24xlarge", 107),
            ("m5.metal", 120),
            ("m6g.medium", 4),
            ("r6i.large", 9),
        ] {
            assert_eq!(branch_limit(name), BranchLimit::Supported(want), "{name}");
        }
    }

    #[test]
    fn burstable_and_xen_types_cannot_trunk() {
        for name in [
            "t3.small",
            "t3.large",
            "t3a.medium",
            "t4g.nano",
            "t2.micro",
            "m4.large",
        ] {
            assert_eq!(branch_limit(name), BranchLimit::Unsupported, "{name}");
            assert_eq!(branch_limit(name).count(), 0);
        }
    }

    #[test]
    fn unknown_types_are_not_guessed() {
        for name in ["x9.huge", "m5.huge", "", "m5"] {
            assert_eq!(branch_limit(name), BranchLimit::Unknown, "{name:?}");
        }
    }

    #[test]
    fn no_type_exceeds_the_vlan_range() {
        let max = TABLE
            .iter()
            .flat_map(|(_, s)| s.iter())
            .map(|(_, n)| *n)
            .max();
        assert_eq!(max, Some(120));
    }
}
