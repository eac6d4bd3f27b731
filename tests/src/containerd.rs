//! containerd driving the plugin over CRI, as the kubelet does on a node.
//!
//! containerd runs inside the simulated node's namespace, so every CNI plugin it runs changes
//! that namespace, never the machine's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    PortMapping, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use serde_json::Value;
use tonic::transport::Channel;

use crate::bins;
use crate::process::{wait_for, Guard};

pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.9";

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    proc: Guard,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// Builds the pause image tarball once per target dir.
fn pause_image() -> anyhow::Result<PathBuf> {
    let out = bins::path("vpc-cni")
        .parent()
        .expect("target dir")
        .join("pause-image.tar");
    if !out.exists() {
        // Built under a private name and renamed, so suites running at once never import a
        // half-written tarball.
        let partial = out.with_extension(format!("tar.{}", std::process::id()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/containerd/pause-image.sh");
        let st = Command::new("bash").arg(script).arg(&partial).status()?;
        if !st.success() {
            bail!("building the pause image failed (needs gcc with static libc)");
        }
        std::fs::rename(&partial, &out)?;
    }
    Ok(out)
}

fn write_config(dir: &Path, conflist: &Value) -> anyhow::Result<PathBuf> {
    let bin_dir = dir.join("cni-bin");
    let conf_dir = dir.join("cni-conf");
    std::fs::create_dir_all(&bin_dir)?;
    std::fs::create_dir_all(&conf_dir)?;
    std::os::unix::fs::symlink(bins::path("vpc-cni"), bin_dir.join("vpc-cni"))?;
    for p in ["loopback", "portmap", "bandwidth", "ptp", "host-local"] {
        std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), bin_dir.join(p))?;
    }
    std::fs::write(
        conf_dir.join("10-vpc-cni.conflist"),
        serde_json::to_vec_pretty(conflist)?,
    )?;
    let d = dir.display();
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "native"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

async fn connect(socket: PathBuf) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    Ok(RuntimeServiceClient::new(channel(socket).await?))
}

/// Waits until the CRI image store knows the pause image. An import only records it; the CRI
/// plugin learns of it from an event, and a RunPodSandbox that comes first tries to pull it.
async fn wait_for_pause_image(socket: PathBuf) -> anyhow::Result<()> {
    let mut images = ImageServiceClient::new(channel(socket).await?);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: PAUSE_IMAGE.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        if images.image_status(req).await?.into_inner().image.is_some() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("containerd does not list {PAUSE_IMAGE} 20s after the import");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn channel(socket: PathBuf) -> anyhow::Result<Channel> {
    crate::rpc::unix_channel(&socket, Duration::from_secs(60)).await
}

impl Containerd {
    /// Starts containerd in `netns` with `conflist` as its only CNI network.
    pub fn start(netns: &str, dir: &Path, conflist: &Value) -> anyhow::Result<Self> {
        let image = pause_image()?;
        let config = write_config(dir, conflist)?;
        let socket = dir.join("containerd.sock");
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let mut proc = Guard::spawn(
            "containerd",
            // nsenter rather than `ip netns exec`: the latter remounts /sys in a new mount
            // namespace, which hides the cgroup mounts runc needs.
            Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{netns}"))
                .args(["containerd", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        wait_for("containerd socket", Duration::from_secs(30), || {
            (socket.exists() || proc.check_running().is_err()).then_some(())
        })?;
        proc.check_running()?;
        let st = Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(["-n", "k8s.io", "images", "import", "--no-unpack"])
            .arg(&image)
            .stdout(Stdio::null())
            .status()
            .context("ctr images import")?;
        if !st.success() {
            bail!("importing the pause image into containerd failed");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(wait_for_pause_image(socket.clone()))?;
        let client = rt.block_on(connect(socket.clone()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            socket,
            proc,
            rt,
            client,
        })
    }

    /// RunPodSandbox as the kubelet sends it; returns the sandbox id.
    pub fn run_pod(
        &mut self,
        namespace: &str,
        name: &str,
        ports: &[(i32, i32)],
    ) -> anyhow::Result<String> {
        self.run_pod_annotated(namespace, name, ports, &[])
    }

    /// RunPodSandbox for a pod with `annotations`, which containerd hands to CNI plugins that
    /// ask for them (bandwidth limits, pod annotations).
    pub fn run_pod_annotated(
        &mut self,
        namespace: &str,
        name: &str,
        ports: &[(i32, i32)],
        annotations: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let config = PodSandboxConfig {
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{namespace}-{name}"),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.dir.join("pods").join(name).display().to_string(),
            port_mappings: ports
                .iter()
                .map(|(container, host)| PortMapping {
                    protocol: 0,
                    container_port: *container,
                    host_port: *host,
                    host_ip: String::new(),
                })
                .collect(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let resp = self.rt.block_on(self.client.run_pod_sandbox(req));
        let resp =
            resp.map_err(|s| anyhow::anyhow!("RunPodSandbox {namespace}/{name}: {}", s.message()))?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    /// The pod IP containerd recorded from the plugin's result.
    pub fn pod_ip(&mut self, id: &str) -> anyhow::Result<String> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        let resp = self.rt.block_on(self.client.pod_sandbox_status(req))?;
        let status = resp.into_inner().status.context("no sandbox status")?;
        Ok(status.network.map(|n| n.ip).unwrap_or_default())
    }

    /// The pod's network namespace path, from the sandbox's verbose status.
    pub fn pod_netns(&mut self, id: &str) -> anyhow::Result<String> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        let resp = self.rt.block_on(self.client.pod_sandbox_status(req))?;
        let info = resp.into_inner().info;
        let doc: Value = serde_json::from_str(info.get("info").context("no verbose info")?)?;
        let namespaces = doc["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        namespaces
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(str::to_string)
            .context("sandbox has no network namespace path")
    }

    pub fn stop_pod(&mut self, id: &str) -> anyhow::Result<()> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.client.stop_pod_sandbox(req))
            .map_err(|s| anyhow::anyhow!("StopPodSandbox {id}: {}", s.message()))?;
        Ok(())
    }

    pub fn remove_pod(&mut self, id: &str) -> anyhow::Result<()> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.client.remove_pod_sandbox(req))
            .map_err(|s| anyhow::anyhow!("RemovePodSandbox {id}: {}", s.message()))?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(20));
    }
}
