//! The instance types the simulator knows, with their published network limits.

#[derive(Debug, PartialEq, Eq)]
pub struct InstanceType {
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub network_performance: &'static str,
    /// ENIs per instance (all on network card 0 for these types).
    pub max_enis: u32,
    /// IPv4 addresses per ENI, the primary included; each /28 prefix takes one of these slots.
    pub ipv4_per_eni: u32,
    pub ipv6_per_eni: u32,
    /// Branch ENIs a trunk on this type may carry (0: no trunking). EC2 does not publish this
    /// through DescribeInstanceTypes; the VPC resource controller keeps its own table.
    pub branch_enis: u32,
}

const fn t(
    name: &'static str,
    vcpus: u32,
    memory_mib: u64,
    network_performance: &'static str,
    limits: (u32, u32, u32),
) -> InstanceType {
    InstanceType {
        name,
        vcpus,
        memory_mib,
        network_performance,
        max_enis: limits.0,
        ipv4_per_eni: limits.1,
        ipv6_per_eni: limits.1,
        branch_enis: limits.2,
    }
}

pub const TABLE: &[InstanceType] = &[
    t("t3.small", 2, 2048, "Up to 5 Gigabit", (3, 4, 0)),
    t("t3.medium", 2, 4096, "Up to 5 Gigabit", (3, 6, 0)),
    t("t3.large", 2, 8192, "Up to 5 Gigabit", (3, 12, 0)),
    t("m5.large", 2, 8192, "Up to 10 Gigabit", (3, 10, 9)),
    t("m5.xlarge", 4, 16384, "Up to 10 Gigabit", (4, 15, 18)),
    t("m5.2xlarge", 8, 32768, "Up to 10 Gigabit", (4, 15, 38)),
    t("m5.4xlarge", 16, 65536, "Up to 10 Gigabit", (8, 30, 54)),
    t("c5.large", 2, 4096, "Up to 10 Gigabit", (3, 10, 9)),
    t("c5.xlarge", 4, 8192, "Up to 10 Gigabit", (4, 15, 18)),
];

/// The most addresses any ENI may hold; an unattached ENI is bounded by this.
pub const MAX_IPV4_PER_ENI: u32 = 50;

pub fn lookup(name: &str) -> Option<&'static InstanceType> {
    TABLE.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_the_published_limits() {
        let m5 = lookup("m5.large").unwrap();
        assert_eq!((m5.max_enis, m5.ipv4_per_eni, m5.branch_enis), (3, 10, 9));
        let t3 = lookup("t3.small").unwrap();
        assert_eq!((t3.max_enis, t3.ipv4_per_eni, t3.branch_enis), (3, 4, 0));
        assert_eq!(lookup("m5.4xlarge").unwrap().max_enis, 8);
        assert!(lookup("x9.huge").is_none());
    }
}
