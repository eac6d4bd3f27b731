//! Pod wiring in the node namespace and the pod namespace: setup with rollback, idempotent
//! teardown that keeps going and reports every failure, and a read-only check.
//!
//! Layout for a regular pod (numbers as aws-node uses them):
//! - pod: `<ifname>` with `<ip>/32`, `169.254.1.1/32 dev <ifname> scope link`,
//!   `default via 169.254.1.1 dev <ifname>`, permanent neighbour 169.254.1.1 → host veth MAC;
//! - node: `<ip>/32 dev <host veth> scope link` in main, rule 512 `to <ip> lookup main`, and
//!   rule 1536 `from <ip> lookup <ENI table>` when the address lives on a secondary ENI.
//!
//! Branch-ENI pods share the pod side and differ on the node; see [`branch`].

pub mod branch;
mod check;
mod setup;
mod sysctl;
mod teardown;

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::netlink::{NetlinkError, NetnsError};

pub use branch::{setup_branch_pod, Branch, BranchNetwork};
pub use check::{check_branch_pod, check_pod, Expected, ExpectedBranch};
pub use setup::{setup_pod, Wired};
pub use teardown::{delete_pod_link, teardown_host, HostTeardown, PodAddress};

/// The pod's gateway: link-local, answered by the permanent neighbour entry, never on a wire.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// "to <pod ip> lookup main": traffic to the pod always uses main, whatever from-rules say.
pub const TO_POD_RULE_PRIORITY: u32 = 512;
/// "from <pod ip> lookup <ENI table>": pod egress leaves through the ENI that owns the address.
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;
/// "iif <vlan link or veth> lookup <100+vlan>": strict-mode branch-ENI pods.
pub const BRANCH_IIF_RULE_PRIORITY: u32 = 10;
/// Branch-ENI route tables are 100 + VLAN id.
pub const BRANCH_TABLE_BASE: u32 = 100;

/// What ADD wires for one regular pod (and the veth part of a branch-ENI pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub host_veth: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    /// The ENI's route table: 254 (main) for the primary ENI.
    pub table: u32,
    pub mtu: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    #[error("{step}: {source}")]
    Netlink {
        step: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{0}")]
    Netns(#[from] NetnsError),
    #[error("sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Mismatch(String),
    #[error("{}", join(.0))]
    Several(Vec<PlumbingError>),
}

fn join(errors: &[PlumbingError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// Adds the step name to a netlink error, so messages read as a path.
trait Step<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, PlumbingError>;
}

impl<T> Step<T> for Result<T, NetlinkError> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, PlumbingError> {
        self.map_err(|source| PlumbingError::Netlink {
            step: step(),
            source,
        })
    }
}

fn host_net(ip: Ipv4Addr) -> IpNet {
    IpNet::V4(Ipv4Net::from(ip))
}

fn gateway() -> IpAddr {
    IpAddr::V4(POD_GATEWAY)
}
