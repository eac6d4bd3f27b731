//! Start-up and shutdown: IMDS → instance limits → attached ENIs → host plumbing →
//! checkpoint restore → warm pool, then the gRPC, introspection and metrics servers until
//! SIGTERM.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use vpc_cni::netlink::{Netlink, NetlinkError};

use crate::checkpoint::{CheckpointBranch, CheckpointError, JsonFile, Loaded};
use crate::config::Config;
use crate::datastore::{Datastore, EniInfo};
use crate::ec2::{self, Ec2, Ec2Error, EniDescription, InstanceLimits};
use crate::firewall::{FirewallConfig, NodeFirewall};
use crate::host::{Host, HostError, LinkWait};
use crate::imds::{Identity, Imds, ImdsError};
use crate::install::InstallConfig;
use crate::introspection::{self, HttpError};
use crate::manager::Manager;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::pool::Limits;
use crate::restore;
use crate::rpc::{self, RpcError};
use crate::sgp::limits::BranchLimit;
use crate::sgp::manager::BranchManager;
use crate::sgp::service::{PodEni, PodEniError, Startup};
use crate::sgp::trunk;

/// How long servers get to finish in-flight requests after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("instance metadata: {0}")]
    Imds(#[from] ImdsError),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("eni setup: {0}")]
    Host(#[from] HostError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("primary eni {0} is not among the attached enis")]
    NoPrimaryEni(String),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("security groups for pods: {0}")]
    PodEni(#[from] PodEniError),
}

pub async fn run(
    config: Config,
    install: InstallConfig,
    firewall: FirewallConfig,
) -> Result<(), DaemonError> {
    for key in &config.ignored_eni_tags {
        tracing::warn!(key = %key, "ignoring ADDITIONAL_ENI_TAGS key reserved for ipamd");
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;

    let metrics = Arc::new(Metrics::new());
    // EC2 retries can make start-up long; a SIGTERM meanwhile ends it cleanly.
    let (node, ec2, host) = tokio::select! {
        init = init_node(config, metrics) => init?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let firewall = NodeFirewall::new(
        firewall,
        node.identity.clone(),
        node.config.veth_prefix.clone(),
    );
    let installed = firewall.install(&node.identity.vpc_cidrs).await;
    let mut tasks = start(node.clone(), ec2, host, stop_rx.clone())?;
    let imds = Imds::new(node.metrics.clone());
    tasks.spawn(firewall.follow_vpc_cidrs(imds, installed, stop_rx.clone()));
    // A one-shot job, not a server: it must not count as one that stopped on its own.
    tokio::spawn(crate::install::when_ready(node.clone(), install, stop_rx));

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("sigterm, shutting down"),
        _ = sigint.recv() => tracing::info!("sigint, shutting down"),
        Some(done) = tasks.join_next() => tracing::error!(result = ?done, "a server stopped on its own, shutting down"),
    }
    node.set_terminating();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let _ = std::fs::remove_file(&node.config.socket_path);
    tracing::info!("ipamd stopped");
    Ok(())
}

/// Everything before serving: after this returns, ADDs can be answered.
async fn init_node(
    config: Config,
    metrics: Arc<Metrics>,
) -> Result<(Arc<Node>, Ec2, Arc<Host>), DaemonError> {
    let imds = Imds::new(metrics.clone());
    let identity = imds.identity().await?;
    tracing::info!(instance = %identity.instance_id, instance_type = %identity.instance_type,
        region = %identity.region, primary_eni = %identity.primary_eni_id, "instance identified");

    let ec2 = Ec2::connect(
        &identity.region,
        config.ec2_endpoint.as_deref(),
        metrics.clone(),
    )
    .await;
    let instance_limits = ec2.instance_limits(&identity.instance_type).await?;
    let attached = attached_enis(&ec2, &identity).await?;

    let host = Arc::new(Host::new(
        Netlink::current()?,
        config.eni_mtu,
        LinkWait::default(),
    ));
    let file = JsonFile::new(&config.backing_store);
    let loaded = file.load()?;
    let branch_records = match &loaded {
        Loaded::Found(file) => file.branch_enis.clone(),
        _ => Vec::new(),
    };
    let mut ds = Datastore::new(Box::new(file), config.ip_cooldown, config.prefix_delegation);
    for eni in &attached.managed {
        tag_adopted(&ec2, &config, &identity, eni).await;
        let info = eni_info(&imds, &identity, eni).await?;
        plumb(&host, &info).await?;
        ds.add_eni(info, SystemTime::now());
        ds.add_cidrs(&eni.id, &eni.cidrs()).expect("eni just added");
    }
    // Kept as they are until the branch pool is rebuilt (or for when ENABLE_POD_ENI is
    // turned back on), so the rewrite below does not lose them.
    ds.keep_branch_records(branch_records.clone());
    restore_allocations(&mut ds, &host, &config, loaded).await?;

    let found = Found {
        config,
        identity,
        metrics,
        instance: instance_limits,
        attached,
        branch_records,
    };
    let node = build_node(found, ds, &ec2, &host).await?;
    tracing::info!(stats = %node.stats(), "datastore ready");
    Ok((node, ec2, host))
}

/// What start-up learned before the node is put together.
struct Found {
    config: Config,
    identity: Identity,
    metrics: Arc<Metrics>,
    instance: InstanceLimits,
    attached: Attached,
    branch_records: Vec<CheckpointBranch>,
}

/// Pool limits, security groups for pods when enabled, and the trunk's ENI slot.
async fn build_node(
    found: Found,
    mut ds: Datastore,
    ec2: &Ec2,
    host: &Arc<Host>,
) -> Result<Arc<Node>, DaemonError> {
    let Found {
        config,
        identity,
        metrics,
        instance,
        attached,
        branch_records,
    } = found;
    let limits = pool_limits(&config, instance, attached.unmanaged);
    let pod_eni = if config.pod_eni.enabled {
        let startup = Startup {
            config: &config,
            identity: &identity,
            ec2: ec2.clone(),
            host: host.clone(),
            instance_max_enis: instance.max_enis,
            trunk: attached.trunk.as_ref(),
            records: branch_records,
        };
        Some(Arc::new(PodEni::start(startup, &mut ds).await?))
    } else {
        None
    };
    let trunk_slot = keeps_trunk_slot(&attached, pod_eni.as_deref(), &config, instance);
    tracing::info!(
        max_enis = limits.max_enis,
        slots_per_eni = limits.slots_per_eni,
        managed = attached.managed.len(),
        unmanaged = attached.unmanaged,
        trunk = ?attached.trunk.as_ref().map(|t| &t.id),
        trunk_slot,
        "limits"
    );
    let mut node = Node::new(config, identity, limits, metrics, ds);
    if let Some(pe) = pod_eni {
        node = node.with_pod_eni(pe);
    }
    node.set_trunk_slot(trunk_slot);
    Ok(Arc::new(node))
}

/// Whether one ENI slot is the trunk's from the start: it is attached, or it is about to be
/// made on a type that can trunk and there is a free slot for it (otherwise regular pods
/// would lose an ENI's worth of addresses for a trunk that cannot come).
fn keeps_trunk_slot(
    attached: &Attached,
    pod_eni: Option<&PodEni>,
    config: &Config,
    instance: InstanceLimits,
) -> bool {
    if attached.trunk.is_some() {
        return true;
    }
    let Some(pe) = pod_eni.filter(|pe| matches!(pe.limit, BranchLimit::Supported(n) if n > 0))
    else {
        return false;
    };
    let cap = config
        .max_eni
        .map_or(instance.max_enis, |m| m.min(instance.max_enis));
    let in_use = attached.managed.len() as u32 + attached.unmanaged;
    if in_use >= cap {
        tracing::warn!(in_use, cap, instance_type = %pe.instance_type, "no free eni slot for a trunk eni");
        return false;
    }
    true
}

/// The attached ENIs on card 0, by role.
struct Attached {
    managed: Vec<EniDescription>,
    /// ENIs ipamd leaves alone, the trunk not counted.
    unmanaged: u32,
    trunk: Option<EniDescription>,
}

/// ENIs attached at device indexes on card 0, from EC2 (not IMDS, which can lag behind an
/// attach that happened just before a crash), split into managed ones and a count of
/// those ipamd must leave alone.
async fn attached_enis(ec2: &Ec2, identity: &Identity) -> Result<Attached, DaemonError> {
    let attached = ec2.attached_enis(&identity.instance_id).await?;
    let ids: Vec<String> = attached.iter().map(|(id, _)| id.clone()).collect();
    let mut described = ec2.describe_enis(&ids).await?;
    described.sort_by_key(|e| e.attachment.as_ref().map_or(u32::MAX, |a| a.device_index));
    if !described.iter().any(|e| e.id == identity.primary_eni_id) {
        return Err(DaemonError::NoPrimaryEni(identity.primary_eni_id.clone()));
    }
    let (managed, unmanaged): (Vec<_>, Vec<_>) = described
        .into_iter()
        .partition(|e| e.id == identity.primary_eni_id || is_manageable(e));
    let (trunks, unmanaged): (Vec<_>, Vec<_>) = unmanaged.into_iter().partition(trunk::is_trunk);
    for eni in &unmanaged {
        tracing::info!(eni = %eni.id, interface_type = %eni.interface_type, "leaving unmanaged eni alone");
    }
    Ok(Attached {
        managed,
        unmanaged: unmanaged.len() as u32,
        trunk: trunks.into_iter().next(),
    })
}

/// aws-node leaves ENIs tagged no_manage=true, trunks and EFA interfaces alone.
fn is_manageable(eni: &EniDescription) -> bool {
    let no_manage = eni
        .tags
        .get(ec2::TAG_NO_MANAGE)
        .is_some_and(|v| v == "true");
    let special = matches!(eni.interface_type.as_str(), "trunk" | "efa" | "efa-only");
    !no_manage && !special
}

/// Puts ipamd's tags on a managed ENI that lacks them, as aws-node does. Best effort: an
/// untagged ENI still works, it is only harder to attribute.
async fn tag_adopted(ec2: &Ec2, config: &Config, identity: &Identity, eni: &EniDescription) {
    let cluster = config.cluster_name.as_deref();
    let missing = ec2::missing_tags(
        &eni.tags,
        &identity.instance_id,
        cluster,
        &config.additional_eni_tags,
    );
    if missing.is_empty() {
        return;
    }
    match ec2.create_tags(&eni.id, &missing).await {
        Ok(()) => tracing::info!(eni = %eni.id, tags = missing.len(), "tagged eni"),
        Err(e) => tracing::warn!(eni = %eni.id, error = %e, "could not tag eni"),
    }
}

async fn eni_info(
    imds: &Imds,
    identity: &Identity,
    eni: &EniDescription,
) -> Result<EniInfo, DaemonError> {
    let subnet = if eni.subnet_id == identity.subnet_id {
        identity.subnet_cidr
    } else {
        imds.subnet_cidr(&eni.mac).await?
    };
    Ok(EniInfo {
        id: eni.id.clone(),
        mac: eni.mac.clone(),
        device_index: eni.attachment.as_ref().map_or(0, |a| a.device_index),
        primary: eni.id == identity.primary_eni_id,
        primary_ip: eni.primary_ip,
        subnet,
    })
}

async fn plumb(host: &Host, info: &EniInfo) -> Result<(), HostError> {
    if info.primary {
        host.setup_primary_eni(info).await
    } else {
        host.setup_secondary_eni(info).await
    }
}

/// Re-attaches allocations from the checkpoint and the host, removes rules of pods that
/// are gone, and rewrites the checkpoint.
async fn restore_allocations(
    ds: &mut Datastore,
    host: &Host,
    config: &Config,
    loaded: Loaded,
) -> Result<(), DaemonError> {
    let (checkpoint, corrupt) = match loaded {
        Loaded::Found(file) => (Some(file), false),
        Loaded::Missing => (None, false),
        Loaded::Corrupt(e) => {
            tracing::error!(error = %e, "checkpoint unusable, rebuilding from host state");
            (None, true)
        }
    };
    let now = SystemTime::now();
    let state = host.pod_state(&config.veth_prefix).await?;
    let plan = restore::plan(checkpoint.as_ref(), &state, now);
    for stale in &plan.stale {
        tracing::info!(key = %stale.key, ip = %stale.ip, pod = %stale.meta.name, "pod gone while ipamd was down, address freed");
    }
    remove_stale_rules(host, &plan.stale_rule_ips).await;
    let adopted = plan.restored.iter().filter(|r| r.key.is_rebuilt()).count();
    for dropped in ds.restore(plan.restored, plan.released) {
        tracing::warn!(key = %dropped.key, ip = %dropped.ip, "allocation not on any attached eni, dropped");
    }
    if corrupt {
        // The record of recently released addresses went with the file.
        ds.cool_down_all_free(now);
    }
    ds.persist()?;
    tracing::info!(adopted_from_host = adopted, "allocations restored");
    Ok(())
}

async fn remove_stale_rules(host: &Host, ips: &BTreeSet<std::net::Ipv4Addr>) {
    for ip in ips {
        match host.remove_pod_rules(*ip).await {
            Ok(n) => tracing::info!(ip = %ip, rules = n, "removed rules of a gone pod"),
            Err(e) => tracing::warn!(error = %e, "could not remove stale pod rules"),
        }
    }
}

fn pool_limits(config: &Config, instance: InstanceLimits, unmanaged: u32) -> Limits {
    let cap = config
        .max_eni
        .map_or(instance.max_enis, |m| m.min(instance.max_enis));
    Limits {
        max_enis: cap.saturating_sub(unmanaged),
        slots_per_eni: instance.ipv4_per_eni.saturating_sub(1),
    }
}

/// Starts the pool manager (whose first round fills the pool) and the servers.
fn start(
    node: Arc<Node>,
    ec2: Ec2,
    host: Arc<Host>,
    stop: watch::Receiver<bool>,
) -> Result<JoinSet<()>, DaemonError> {
    let listener = rpc::bind(&node.config.socket_path)?;
    let mut tasks = JoinSet::new();
    let manager = Manager::new(node.clone(), ec2, host);
    tasks.spawn(manager.run(stop.clone()));
    if let Some(pe) = &node.pod_eni {
        let branches = BranchManager::new(node.clone(), pe.clone());
        tasks.spawn(branches.run(stop.clone()));
    }

    let (n, s) = (node.clone(), stop.clone());
    tasks.spawn(async move {
        if let Err(e) = rpc::serve(listener, n, s).await {
            tracing::error!(error = %e, "grpc server failed");
        }
    });
    if let Some(addr) = node.config.introspection_bind {
        let router = introspection::introspection_router(node.clone());
        tasks.spawn(log_http(introspection::serve(addr, router, stop.clone())));
    }
    if let Some(addr) = node.config.metrics_bind {
        let router = introspection::metrics_router(node.clone());
        tasks.spawn(log_http(introspection::serve(addr, router, stop)));
    }
    tracing::info!(socket = %node.config.socket_path.display(), "serving");
    Ok(tasks)
}

async fn log_http(server: impl std::future::Future<Output = Result<(), HttpError>>) {
    if let Err(e) = server.await {
        tracing::error!(error = %e, "http server failed");
    }
}
