//! Putting vpc-cni on the node: the plugin binary into the host's CNI bin directory and the
//! conflist into its conf directory, each atomically (a temp file in the same directory,
//! fsync, rename), and the conflist only once ipamd can give out an address, so the kubelet
//! does not report the node Ready before pods can be networked.
//!
//! Both directories are opt-in through aws-node's variables (`HOST_CNI_BIN_PATH`,
//! `HOST_CNI_CONFDIR_PATH`); the DaemonSet sets them. ipamd run by hand writes nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;
use tokio::sync::watch;

use crate::node::Node;

pub const HOST_CNI_BIN_PATH: &str = "HOST_CNI_BIN_PATH";
pub const HOST_CNI_CONFDIR_PATH: &str = "HOST_CNI_CONFDIR_PATH";
pub const POD_MTU: &str = "POD_MTU";
pub const PLUGIN_LOG_FILE: &str = "AWS_VPC_K8S_PLUGIN_LOG_FILE";
pub const PLUGIN_LOG_LEVEL: &str = "AWS_VPC_K8S_PLUGIN_LOG_LEVEL";
pub const ENABLE_BANDWIDTH_PLUGIN: &str = "ENABLE_BANDWIDTH_PLUGIN";
pub const PLUGIN_BINARY: &str = "VPC_CNI_PLUGIN_BINARY";
pub const DISABLE_TCP_EARLY_DEMUX: &str = "DISABLE_TCP_EARLY_DEMUX";

/// The variables this module reads, for the manifest check.
pub const ENV_VARS: &[&str] = &[
    HOST_CNI_BIN_PATH,
    HOST_CNI_CONFDIR_PATH,
    POD_MTU,
    PLUGIN_LOG_FILE,
    PLUGIN_LOG_LEVEL,
    ENABLE_BANDWIDTH_PLUGIN,
    PLUGIN_BINARY,
    DISABLE_TCP_EARLY_DEMUX,
];

/// aws-node's file name, so switching images replaces its conflist instead of adding a
/// second one that the runtime would ignore or prefer.
pub const CONFLIST_NAME: &str = "10-aws.conflist";
pub const PLUGIN_NAME: &str = "vpc-cni";
const DEFAULT_PLUGIN_BINARY: &str = "/app/vpc-cni";
const DEFAULT_PLUGIN_LOG_FILE: &str = "/var/log/aws-routed-eni/plugin.log";

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("install {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstallConfig {
    pub bin_dir: Option<PathBuf>,
    pub conf_dir: Option<PathBuf>,
    pub plugin_binary: PathBuf,
    pub pod_mtu: u32,
    pub veth_prefix: String,
    pub enforcing_mode: String,
    pub plugin_log_file: String,
    pub plugin_log_level: String,
    pub bandwidth: bool,
    /// Set only when ipamd listens somewhere else than the default socket.
    pub ipamd_socket: Option<String>,
}

impl InstallConfig {
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        config: &crate::config::Config,
    ) -> Result<Self, InstallError> {
        let get = |n: &str| lookup(n).filter(|v| !v.is_empty());
        let pod_mtu = match get(POD_MTU) {
            None => config.eni_mtu,
            Some(v) => parse_mtu(&v)?,
        };
        let plugin_log_file =
            get(PLUGIN_LOG_FILE).unwrap_or_else(|| DEFAULT_PLUGIN_LOG_FILE.into());
        if plugin_log_file == "stdout" {
            return Err(InstallError::Invalid {
                name: PLUGIN_LOG_FILE,
                reason: "stdout carries the plugin's result; use a file or stderr".into(),
            });
        }
        let socket = config.socket_path.to_string_lossy().into_owned();
        Ok(InstallConfig {
            bin_dir: get(HOST_CNI_BIN_PATH).map(PathBuf::from),
            conf_dir: get(HOST_CNI_CONFDIR_PATH).map(PathBuf::from),
            plugin_binary: get(PLUGIN_BINARY)
                .unwrap_or_else(|| DEFAULT_PLUGIN_BINARY.into())
                .into(),
            pod_mtu,
            veth_prefix: config.veth_prefix.clone(),
            enforcing_mode: crate::config::mode_name(config.pod_eni.enforcing_mode).into(),
            plugin_log_file,
            plugin_log_level: get(PLUGIN_LOG_LEVEL).unwrap_or_else(|| "Debug".into()),
            bandwidth: get(ENABLE_BANDWIDTH_PLUGIN).is_some_and(|v| v == "true"),
            ipamd_socket: (socket != vpc_cni_proto::DEFAULT_SOCKET).then_some(socket),
        })
    }
}

fn parse_mtu(v: &str) -> Result<u32, InstallError> {
    match v.parse::<u32>() {
        Ok(m) if (576..=9001).contains(&m) => Ok(m),
        _ => Err(InstallError::Invalid {
            name: POD_MTU,
            reason: format!("{v:?} is not an MTU between 576 and 9001"),
        }),
    }
}

/// The conflist the node's runtime reads: vpc-cni, then portmap, then (optionally)
/// bandwidth. `mtu` is a string, as aws-node writes it and older readers expect.
pub fn render_conflist(c: &InstallConfig) -> Value {
    let mut plugin = json!({
        "type": PLUGIN_NAME,
        "vethPrefix": c.veth_prefix,
        "mtu": c.pod_mtu.to_string(),
        "podSGEnforcingMode": c.enforcing_mode,
        "pluginLogFile": c.plugin_log_file,
        "pluginLogLevel": c.plugin_log_level,
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
    });
    if let Some(socket) = &c.ipamd_socket {
        plugin["ipamdSocket"] = json!(socket);
    }
    let mut plugins = vec![
        plugin,
        json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
    ];
    if c.bandwidth {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["0.4.0", "1.0.0", "1.1.0"],
        "name": "aws-cni",
        "plugins": plugins,
    })
}

/// Replaces `dir/name` with `bytes` so a reader sees the old file or the new one, never a
/// part: temp file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let target = dir.join(name);
    let err = |source| InstallError::Io {
        path: target.clone(),
        source,
    };
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Copies the plugin binary into the host's CNI bin directory, if one is configured.
pub fn install_plugin(c: &InstallConfig) -> Result<Option<PathBuf>, InstallError> {
    let Some(dir) = &c.bin_dir else {
        return Ok(None);
    };
    let bytes = fs::read(&c.plugin_binary).map_err(|source| InstallError::Io {
        path: c.plugin_binary.clone(),
        source,
    })?;
    write_atomic(dir, PLUGIN_NAME, &bytes, 0o755)?;
    Ok(Some(dir.join(PLUGIN_NAME)))
}

/// Writes the conflist, if a conf directory is configured.
pub fn install_conflist(c: &InstallConfig) -> Result<Option<PathBuf>, InstallError> {
    let Some(dir) = &c.conf_dir else {
        return Ok(None);
    };
    let text = serde_json::to_vec_pretty(&render_conflist(c)).expect("conflist serialises");
    write_atomic(dir, CONFLIST_NAME, &text, 0o644)?;
    Ok(Some(dir.join(CONFLIST_NAME)))
}

/// Installs the plugin at once and the conflist as soon as an ADD could get an address.
pub async fn when_ready(node: Arc<Node>, c: InstallConfig, mut stop: watch::Receiver<bool>) {
    match install_plugin(&c) {
        Ok(Some(path)) => tracing::info!(path = %path.display(), "plugin installed"),
        Ok(None) => tracing::info!("HOST_CNI_BIN_PATH unset, plugin not installed"),
        Err(e) => tracing::error!(error = %e, "plugin install failed"),
    }
    if c.conf_dir.is_none() {
        tracing::info!("HOST_CNI_CONFDIR_PATH unset, conflist not written");
        return;
    }
    while node.stats().available() == 0 {
        tokio::select! {
            _ = node.pool_changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
    match install_conflist(&c) {
        Ok(Some(path)) => {
            tracing::info!(path = %path.display(), "conflist written, node can network pods")
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "conflist write failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::POD_SECURITY_GROUP_ENFORCING_MODE;

    fn config(extra: &[(&str, &str)]) -> Result<InstallConfig, InstallError> {
        let map: std::collections::HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let base = crate::config::Config::from_lookup(|n| map.get(n).cloned()).unwrap();
        InstallConfig::from_lookup(|n| map.get(n).cloned(), &base)
    }

    #[test]
    fn conflist_carries_the_configuration() {
        let c = config(&[
            (POD_MTU, "1500"),
            (POD_SECURITY_GROUP_ENFORCING_MODE, "standard"),
        ])
        .unwrap();
        let v = render_conflist(&c);
        assert_eq!(v["name"], "aws-cni");
        assert_eq!(v["plugins"][0]["type"], "vpc-cni");
        assert_eq!(v["plugins"][0]["mtu"], "1500");
        assert_eq!(v["plugins"][0]["vethPrefix"], "eni");
        assert_eq!(v["plugins"][0]["podSGEnforcingMode"], "standard");
        assert!(v["plugins"][0].get("ipamdSocket").is_none());
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn pod_mtu_defaults_to_the_eni_mtu_and_bandwidth_is_optional() {
        let c = config(&[(ENABLE_BANDWIDTH_PLUGIN, "true")]).unwrap();
        assert_eq!(c.pod_mtu, 9001);
        let v = render_conflist(&c);
        assert_eq!(v["plugins"][2]["type"], "bandwidth");
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (name, value) in [(POD_MTU, "100"), (PLUGIN_LOG_FILE, "stdout")] {
            let err = config(&[(name, value)]).unwrap_err().to_string();
            assert!(err.starts_with(name), "{err}");
        }
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "x.conflist", b"one", 0o644).unwrap();
        write_atomic(dir.path(), "x.conflist", b"two", 0o644).unwrap();
        assert_eq!(fs::read(dir.path().join("x.conflist")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn nothing_is_installed_without_the_host_paths() {
        let c = config(&[]).unwrap();
        assert!(install_plugin(&c).unwrap().is_none());
        assert!(install_conflist(&c).unwrap().is_none());
    }
}
