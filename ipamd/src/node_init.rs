//! `ipamd init`, the DaemonSet's init container: installs the plugin binary into the host's
//! CNI bin directory and sets the node sysctls aws-node's init container sets.

use std::path::PathBuf;

use thiserror::Error;
use vpc_cni::netlink::Netlink;

use crate::install::{self, InstallConfig, InstallError, DISABLE_TCP_EARLY_DEMUX};

#[derive(Debug, Error)]
pub enum InitError {
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("netlink: {0}")]
    Netlink(#[from] vpc_cni::netlink::NetlinkError),
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub async fn run(c: &InstallConfig, disable_early_demux: bool) -> Result<(), InitError> {
    match install::install_plugin(c)? {
        Some(path) => tracing::info!(path = %path.display(), "plugin installed"),
        None => tracing::info!("HOST_CNI_BIN_PATH unset, plugin not installed"),
    }
    // Strict-mode pods are probed by the kubelet through the VPC; early demux would pin the
    // reply path to the wrong route (aws-node's DISABLE_TCP_EARLY_DEMUX).
    let demux = if disable_early_demux { "0" } else { "1" };
    set_sysctl("net/ipv4/tcp_early_demux", demux)?;
    tracing::info!(
        variable = DISABLE_TCP_EARLY_DEMUX,
        value = demux,
        "tcp_early_demux set"
    );

    // Loose reverse-path filtering on the primary interface: replies to NodePort traffic and
    // pods on secondary ENIs arrive on one ENI and leave by another.
    if let Some(primary) = primary_interface().await? {
        set_sysctl(&format!("net/ipv4/conf/{primary}/rp_filter"), "2")?;
        tracing::info!(interface = %primary, "rp_filter loose on the primary interface");
    }
    Ok(())
}

/// The interface of the main table's default route: the primary ENI on an EC2 node.
async fn primary_interface() -> Result<Option<String>, InitError> {
    let nl = Netlink::current()?;
    let routes = nl.routes(false).await?;
    let oif = routes
        .iter()
        .find(|r| r.table == 254 && r.destination.prefix_len() == 0)
        .and_then(|r| r.oif);
    let Some(index) = oif else {
        return Ok(None);
    };
    Ok(nl.link_by_index(index).await?.map(|l| l.name))
}

/// Writes a sysctl if the kernel has it; a missing one (no IPv6, an older kernel) is skipped.
fn set_sysctl(name: &str, value: &str) -> Result<(), InitError> {
    let path = PathBuf::from("/proc/sys").join(name);
    match std::fs::write(&path, value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InitError::Sysctl { path, source }),
    }
}
