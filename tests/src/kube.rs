//! A real Kubernetes API server for the suites that need Kubernetes objects: etcd and
//! kube-apiserver on loopback ports, state in a temporary directory, stopped by PID on drop.
//!
//! There is no controller-manager or kubelet. So the harness creates each namespace's
//! `default` ServiceAccount itself, pods must set `automountServiceAccountToken: false`, and
//! deletes need a zero grace period.

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tempfile::TempDir;

use crate::process::{wait_for, Guard};

/// Overrides where the kube-apiserver binary is taken from.
pub const APISERVER_ENV: &str = "KUBE_APISERVER";
/// Where tests/kube/build-apiserver.sh leaves the binary.
pub const DEFAULT_APISERVER: &str = "/var/cache/vpc-cni/kube/kube-apiserver";
const ADMIN_TOKEN: &str = "vpc-cni-test-admin";
/// How long the API server may take to become ready; `KUBE_READY_TIMEOUT_SECONDS` raises it
/// where it is slow (inside a User-mode Linux guest it needs up to ~130 s).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn ready_timeout() -> Duration {
    std::env::var("KUBE_READY_TIMEOUT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(READY_TIMEOUT)
}

/// etcd plus kube-apiserver. Fields drop in order: the API server stops before etcd, and the
/// directory with both their state goes last.
pub struct ApiServer {
    pub url: String,
    pub kubeconfig: PathBuf,
    apiserver: Guard,
    _etcd: Guard,
    dir: TempDir,
}

impl ApiServer {
    /// Starts both and waits until the API server is ready and `default` has its
    /// ServiceAccount. Fails, naming what to install, when a binary is missing.
    pub async fn start() -> anyhow::Result<Self> {
        let apiserver_bin = apiserver_binary()?;
        let dir = tempfile::Builder::new().prefix("vpc-cni-kube-").tempdir()?;
        let etcd_port = free_port()?;
        let (etcd, etcd_log) = start_etcd(dir.path(), etcd_port)?;
        wait_for("etcd to listen", Duration::from_secs(20), || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, etcd_port)).ok()
        })
        .with_context(|| {
            let log = fs::read_to_string(&etcd_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            format!(
                "etcd log {}:\n{}",
                etcd_log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;

        let port = free_port()?;
        let apiserver = start_apiserver(&apiserver_bin, dir.path(), port, etcd_port)?;
        let url = format!("https://127.0.0.1:{port}");
        let mut me = Self {
            kubeconfig: dir.path().join("kubeconfig"),
            url,
            apiserver,
            _etcd: etcd,
            dir,
        };
        me.wait_ready().await?;
        let client = me.client().await?;
        me.ensure_namespace(&client, "default").await?;
        Ok(me)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API server's loopback address.
    pub fn addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        let host_port = self.url.trim_start_matches("https://");
        host_port
            .parse()
            .with_context(|| format!("api server url {}", self.url))
    }

    /// Writes a kubeconfig at `path` for the same admin user and CA that reaches the API
    /// server at `url` (a relay's address, say).
    pub fn kubeconfig_via(&self, url: &str, path: &Path) -> anyhow::Result<()> {
        let cert = self.dir().join("certs/apiserver.crt");
        fs::write(path, kubeconfig_yaml(url, &cert))
            .with_context(|| format!("write kubeconfig {}", path.display()))
    }

    /// A client that acts as a cluster admin.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let file = Kubeconfig::read_from(&self.kubeconfig)?;
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// The last `lines` lines of the API server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir().join("apiserver.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Creates namespace `name` and its `default` ServiceAccount unless they exist.
    pub async fn ensure_namespace(&self, client: &Client, name: &str) -> anyhow::Result<()> {
        let namespace = Namespace {
            metadata: named(name),
            ..Default::default()
        };
        create_unless_exists(&Api::<Namespace>::all(client.clone()), &namespace)
            .await
            .with_context(|| format!("create namespace {name}"))?;
        let account = ServiceAccount {
            metadata: named("default"),
            automount_service_account_token: Some(false),
            ..Default::default()
        };
        create_unless_exists(&Api::namespaced(client.clone(), name), &account)
            .await
            .with_context(|| format!("create service account {name}/default"))
    }

    /// Applies the CustomResourceDefinition in the YAML file at `path` and waits until the API
    /// server serves it.
    pub async fn install_crd(&self, client: &Client, path: &Path) -> anyhow::Result<String> {
        let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let name = crd.metadata.name.clone().context("crd without a name")?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let apply = PatchParams::apply("vpc-cni-tests").force();
        crds.patch(&name, &apply, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("apply crd {name}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_established(&crds.get(&name).await?) {
            if Instant::now() > deadline {
                bail!("crd {name} not established after 30s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(name)
    }

    /// Writes the kubeconfig once the API server has made its certificate, then polls /readyz.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let cert = self.dir().join("certs/apiserver.crt");
        let deadline = Instant::now() + ready_timeout();
        while !cert.exists() {
            self.check_alive(deadline)?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fs::write(&self.kubeconfig, kubeconfig_yaml(&self.url, &cert))?;
        let client = self.client().await?;
        loop {
            self.check_alive(deadline)?;
            let request = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(body) = client.request_text(request).await {
                if body.trim() == "ok" {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn check_alive(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let problem = match self.apiserver.check_running() {
            Err(e) => e.to_string(),
            Ok(()) if Instant::now() > deadline => {
                format!("kube-apiserver not ready after {:?}", ready_timeout())
            }
            Ok(()) => return Ok(()),
        };
        bail!("{problem}\napiserver log:\n{}", self.log_tail(20))
    }
}

fn apiserver_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(APISERVER_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_APISERVER));
    if !path.is_file() {
        bail!(
            "kube-apiserver not found at {} (set {APISERVER_ENV} or run tests/kube/build-apiserver.sh)",
            path.display()
        );
    }
    Ok(path)
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    let file = fs::File::create(dir.join(name))?;
    Ok((file.try_clone()?.into(), file.into()))
}

fn start_etcd(dir: &Path, client_port: u16) -> anyhow::Result<(Guard, PathBuf)> {
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let client = format!("http://127.0.0.1:{client_port}");
    let (out, err) = log_file(dir, "etcd.log")?;
    let mut cmd = Command::new("etcd");
    cmd.arg("--name=local")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=local={peer}"))
        .args(["--logger=zap", "--log-level=warn"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let guard = Guard::spawn("etcd", &mut cmd)
        .context("etcd is Debian's etcd-server package (apt-get install etcd-server)")?;
    Ok((guard, dir.join("etcd.log")))
}

fn start_apiserver(bin: &Path, dir: &Path, port: u16, etcd_port: u16) -> anyhow::Result<Guard> {
    let key = dir.join("service-account.key");
    let status = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .context("run openssl to make the service-account key")?;
    if !status.success() {
        bail!("openssl genrsa: {status}");
    }
    let tokens = dir.join("tokens.csv");
    fs::write(
        &tokens,
        format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
    )?;

    let path = |p: &Path| p.display().to_string();
    let (out, err) = log_file(dir, "apiserver.log")?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        // 1.20 still opens an unauthenticated port 8080 unless told not to.
        "--insecure-port=0",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--service-cluster-ip-range=10.96.0.0/16",
        // Nothing serves the kubernetes Service here, and loopback endpoints are invalid.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        // As on any real cluster: node agents such as the CNI's init container are privileged.
        "--allow-privileged=true",
    ])
    .arg(format!("--secure-port={port}"))
    .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
    .arg(format!("--cert-dir={}", path(&dir.join("certs"))))
    .arg(format!("--token-auth-file={}", path(&tokens)))
    .arg(format!("--service-account-key-file={}", path(&key)))
    .arg(format!("--service-account-signing-key-file={}", path(&key)))
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    Guard::spawn("kube-apiserver", &mut cmd)
}

/// The self-signed serving certificate file also holds the CA that signed it.
fn kubeconfig_yaml(url: &str, cert: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {url}
    certificate-authority: {cert}
users:
- name: admin
  user:
    token: {ADMIN_TOKEN}
contexts:
- name: local
  context:
    cluster: local
    user: admin
current-context: local
",
        cert = cert.display()
    )
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
}

async fn create_unless_exists<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Established" && c.status == "True")
}
