//! Per-interface sysctls, written in the namespace the interface lives in: /proc/sys/net
//! resolves against the network namespace of the thread that opens the file.

use std::io;

use super::PlumbingError;
use crate::netlink::Netns;

/// The settings aws-node applies to host veths and VLAN links before bringing them up: no
/// router advertisements, accept redirects, no IPv6 forwarding. Missing files (IPv6 disabled
/// on the node) are skipped.
pub(super) fn tune_host_link(netns: Option<&Netns>, link: &str) -> Result<(), PlumbingError> {
    let settings = [
        ("accept_ra", "0"),
        ("accept_redirects", "1"),
        ("forwarding", "0"),
    ];
    let write_all = || -> Result<(), PlumbingError> {
        for (name, value) in settings {
            let key = format!("net/ipv6/conf/{link}/{name}");
            write(&key, value).map_err(|source| PlumbingError::Sysctl { key, source })?;
        }
        Ok(())
    };
    match netns {
        None => write_all(),
        Some(ns) => ns.run(write_all)?,
    }
}

fn write(key: &str, value: &str) -> io::Result<()> {
    match std::fs::write(format!("/proc/sys/{key}"), value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
