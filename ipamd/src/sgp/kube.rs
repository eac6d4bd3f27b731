//! The Kubernetes side of security groups for pods: a client, watch caches of this node's pods,
//! ServiceAccounts and SecurityGroupPolicies, and the few writes ipamd makes (the pod-eni
//! annotation, the trunk label, the branch capacity, and events on the node).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use thiserror::Error;
use tokio::task::JoinHandle;

use super::annotation::{self, AnnotationError, BranchEni, POD_ENI_ANNOTATION};
use super::policy::{self, PodGroups, PolicyError, SecurityGroupPolicy};
use super::warm::GroupSet;

/// Label by which a node asks for (false) or reports (true) a trunk ENI.
pub const HAS_TRUNK_LABEL: &str = "vpc.amazonaws.com/has-trunk-attached";
/// The extended resource an SGP pod requests; its node capacity is the branch limit.
pub const POD_ENI_RESOURCE: &str = "vpc.amazonaws.com/pod-eni";
/// Events ipamd records name this as their source.
pub const REPORTING_COMPONENT: &str = "aws-node";

/// The severity of a node event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Normal => "Normal",
            EventKind::Warning => "Warning",
        }
    }
}

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: KubeconfigError,
    },
    #[error("in-cluster kubernetes config: {0}")]
    InCluster(#[source] InClusterError),
    #[error("kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("{action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        source: kube::Error,
    },
    #[error("pod {0} not found")]
    PodNotFound(String),
    #[error("pod {pod} is no longer the pod with uid {uid}")]
    PodReplaced { pod: String, uid: String },
    #[error("watch of {0} ended before its first full list")]
    WatchEnded(&'static str),
    #[error("watch caches not synced after {0:?}")]
    NotSynced(Duration),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("pod {pod}: {source}")]
    Annotation {
        pod: String,
        source: AnnotationError,
    },
}

/// A client from the kubeconfig at `kubeconfig`, or from the pod's service account when none
/// is given, as aws-node runs in the cluster.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => Config::incluster().map_err(KubeError::InCluster)?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

/// In-memory copies of the objects pod matching reads, kept current by watches.
///
/// A store is replaced whole after each full list (kube's reflector buffers a relist), so once
/// synced it never shows a partial inventory; an object missing from it is really missing,
/// or newer than the cache.
pub struct Caches {
    pub pods: Store<Pod>,
    pub service_accounts: Store<ServiceAccount>,
    pub policies: Store<SecurityGroupPolicy>,
    /// False when the SecurityGroupPolicy resource is not installed: the store stays empty.
    pub policies_watched: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Caches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Caches {
    /// Starts the watches on the current tokio runtime: pods bound to `node_name`, and every
    /// ServiceAccount and SecurityGroupPolicy (policies of any namespace may select a pod that
    /// lands here later).
    pub fn start(client: &Client, node_name: &str) -> Self {
        Self::start_with(client, node_name, true)
    }

    /// As [`Self::start`]; without `watch_policies` the policy store is empty and synced from
    /// the start, for clusters that never installed the SecurityGroupPolicy resource.
    pub fn start_with(client: &Client, node_name: &str, watch_policies: bool) -> Self {
        let node_pods = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        let (pods, pod_task) = watch("pods", Api::all(client.clone()), node_pods);
        let all = watcher::Config::default();
        let (service_accounts, sa_task) =
            watch("serviceaccounts", Api::all(client.clone()), all.clone());
        let mut tasks = vec![pod_task, sa_task];
        let policies = if watch_policies {
            let (store, task) = watch("securitygrouppolicies", Api::all(client.clone()), all);
            tasks.push(task);
            store
        } else {
            empty_store()
        };
        Self {
            pods,
            service_accounts,
            policies,
            policies_watched: watch_policies,
            tasks,
        }
    }

    /// Whether every watch has completed its first full list, without waiting.
    pub fn synced(&self) -> bool {
        let ready =
            |f: Option<Result<(), reflector::store::WriterDropped>>| f.is_some_and(|r| r.is_ok());
        ready(self.pods.wait_until_ready().now_or_never())
            && ready(self.service_accounts.wait_until_ready().now_or_never())
            && ready(self.policies.wait_until_ready().now_or_never())
    }

    /// Waits until each watch has completed its first full list.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), KubeError> {
        let all = async {
            self.pods
                .wait_until_ready()
                .await
                .map_err(|_| KubeError::WatchEnded("pods"))?;
            self.service_accounts
                .wait_until_ready()
                .await
                .map_err(|_| KubeError::WatchEnded("serviceaccounts"))?;
            self.policies
                .wait_until_ready()
                .await
                .map_err(|_| KubeError::WatchEnded("securitygrouppolicies"))
        };
        tokio::time::timeout(timeout, all)
            .await
            .map_err(|_| KubeError::NotSynced(timeout))?
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn service_account(&self, namespace: &str, name: &str) -> Option<Arc<ServiceAccount>> {
        self.service_accounts
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// The security groups `pod` gets from the policies of its namespace.
    pub fn security_groups_for(&self, pod: &Pod) -> Result<PodGroups, PolicyError> {
        let namespace = pod.namespace().unwrap_or_default();
        let account = self.service_account(&namespace, policy::service_account_name(pod));
        let policies = self.policies.state();
        policy::security_groups_for(pod, policies.iter().map(Arc::as_ref), account.as_deref())
    }

    /// The sets this node is likely to need next, besides the node's own: the groups of every
    /// usable policy in a namespace that has pods here, and the groups of the branch pods
    /// here. Sorted, so the warm pool plans the same way on every pass.
    pub fn likely_group_sets(&self) -> Vec<GroupSet> {
        let pods = self.pods.state();
        let namespaces: BTreeSet<String> = pods.iter().filter_map(|p| p.namespace()).collect();
        let mut sets = BTreeSet::new();
        for policy in self.policies.state() {
            let here = policy
                .namespace()
                .is_some_and(|ns| namespaces.contains(&ns));
            if here && policy.is_usable() {
                sets.insert(GroupSet::new(
                    policy.spec.security_groups.group_ids.iter().cloned(),
                ));
            }
        }
        for pod in pods.iter().filter(|p| wants_branch(p)) {
            if let Ok(groups) = self.security_groups_for(pod) {
                sets.insert(GroupSet::new(groups.groups));
            }
        }
        sets.into_iter().filter(|s| !s.is_empty()).collect()
    }

    /// The branch ENI the cached pod was given, if it has the annotation yet.
    pub fn pod_branch(
        &self,
        namespace: &str,
        name: &str,
        trunk_max_vlan: u16,
    ) -> Result<Option<BranchEni>, KubeError> {
        let pod = self
            .pod(namespace, name)
            .ok_or_else(|| KubeError::PodNotFound(format!("{namespace}/{name}")))?;
        branch_of(&pod, trunk_max_vlan)
    }
}

/// A store that is ready and stays empty.
fn empty_store<K>() -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

/// Blocks until the API server answers, retrying with backoff (1 s doubling to 30 s) and
/// logging why each attempt failed: without it no branch pod can be served.
pub async fn wait_for_api(client: &Client) {
    let mut delay = Duration::from_secs(1);
    loop {
        match client.apiserver_version().await {
            Ok(version) => {
                tracing::info!(version = %version.git_version, "kubernetes api server answers");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), retry_in_s = delay.as_secs(),
                    "kubernetes api server not reachable, ENABLE_POD_ENI needs it");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Whether the API server serves SecurityGroupPolicies (its CRD is installed).
pub async fn policies_installed(client: &Client) -> Result<bool, KubeError> {
    let policies: Api<SecurityGroupPolicy> = Api::all(client.clone());
    match policies.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => Err(api_error("list", "securitygrouppolicies".into(), source)),
    }
}

/// Runs a reflector for `api` in a task; the task logs and retries with backoff on errors.
fn watch<K>(what: &'static str, api: Api<K>, config: watcher::Config) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // Managed fields are about half of most objects and nothing here reads them.
    let events = watcher(api, config)
        .default_backoff()
        .map_ok(|event| event.modify(|obj| obj.meta_mut().managed_fields = None));
    let task = tokio::spawn(drain(what, reflector::reflector(writer, events)));
    (reader, task)
}

async fn drain<S, T>(what: &'static str, stream: S)
where
    S: Stream<Item = Result<T, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        if let Err(error) = item {
            tracing::warn!(resource = what, %error, "kubernetes watch failed, retrying");
        }
    }
}

/// Whether the pod asks for a branch ENI: its first container's limits name the pod-eni
/// resource (the controller's webhook puts it there, and only there).
pub fn wants_branch(pod: &Pod) -> bool {
    let first = pod.spec.as_ref().and_then(|s| s.containers.first());
    let limits = first.and_then(|c| c.resources.as_ref()?.limits.as_ref());
    limits.is_some_and(|l| l.keys().any(|k| k.starts_with(POD_ENI_RESOURCE)))
}

/// The pod's validated branch ENI, or None while it has no pod-eni annotation.
pub fn branch_of(pod: &Pod, trunk_max_vlan: u16) -> Result<Option<BranchEni>, KubeError> {
    let Some(value) = pod.annotations().get(POD_ENI_ANNOTATION) else {
        return Ok(None);
    };
    annotation::parse_single(value, trunk_max_vlan)
        .map(Some)
        .map_err(|source| KubeError::Annotation {
            pod: pod_key(pod),
            source,
        })
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// A pod as the API server has it now, with its UID and raw pod-eni annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAnnotation {
    pub uid: String,
    pub pod_eni: Option<String>,
}

/// Writes to the API server on behalf of this node.
#[derive(Clone)]
pub struct NodeClient {
    client: Client,
    node_name: String,
}

impl NodeClient {
    pub fn new(client: Client, node_name: &str) -> Self {
        Self {
            client,
            node_name: node_name.into(),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Sets the pod-eni annotation, only on the pod with `uid`: a pod deleted and recreated
    /// under the same name must not receive the old pod's branch.
    pub async fn annotate_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        entries: &[BranchEni],
    ) -> Result<(), KubeError> {
        // A UID in a patch cannot change the object's UID: the API server refuses the patch
        // when it differs, which makes it a precondition.
        let patch = json!({
            "metadata": {
                "uid": uid,
                "annotations": { POD_ENI_ANNOTATION: annotation::render(entries) }
            }
        });
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = format!("{namespace}/{name}");
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if is_uid_rejection(&status) => {
                let uid = uid.to_string();
                return Err(KubeError::PodReplaced { pod, uid });
            }
            Err(source) => return Err(api_error("annotate", format!("pod {pod}"), source)),
        }
        tracing::info!(
            namespace,
            pod = name,
            uid,
            "pod annotated with its branch eni"
        );
        Ok(())
    }

    /// The pod from the API server, for when the cache has not seen it yet.
    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.get_opt(name)
            .await
            .map_err(|source| api_error("get", format!("pod {namespace}/{name}"), source))
    }

    /// Reads the pod from the API server rather than the cache, for when the cache may lag.
    pub async fn pod_annotation(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PodAnnotation>, KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(|source| api_error("get", format!("pod {namespace}/{name}"), source))?;
        Ok(pod.map(|p| PodAnnotation {
            uid: p.uid().unwrap_or_default(),
            pod_eni: p.annotations().get(POD_ENI_ANNOTATION).cloned(),
        }))
    }

    /// Sets the node label that asks for a trunk (false) or says one is attached (true).
    pub async fn label_trunk(&self, attached: bool) -> Result<(), KubeError> {
        let patch = json!({ "metadata": { "labels": { HAS_TRUNK_LABEL: attached.to_string() } } });
        self.nodes()
            .patch(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|source| api_error("label", self.node_ref(), source))?;
        tracing::info!(node = %self.node_name, attached, "node trunk label set");
        Ok(())
    }

    /// Advertises `branches` of the pod-eni resource so the scheduler places SGP pods here.
    /// Allocatable is set too, so the scheduler can use it at once instead of after the
    /// kubelet's next status update copies capacity over.
    pub async fn advertise_branch_capacity(&self, branches: u32) -> Result<(), KubeError> {
        let quantity = branches.to_string();
        let patch = json!({
            "status": {
                "capacity": { POD_ENI_RESOURCE: quantity },
                "allocatable": { POD_ENI_RESOURCE: quantity }
            }
        });
        self.nodes()
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|source| api_error("patch status of", self.node_ref(), source))?;
        tracing::info!(node = %self.node_name, branches, "branch capacity advertised");
        Ok(())
    }

    /// Records an event on the node, where `kubectl describe node` shows it.
    ///
    /// A core/v1 Event as the kubelet writes them: API servers before 1.24 accept an
    /// events.k8s.io Event about a cluster-scoped object only in kube-system, where
    /// `kubectl describe node` does not look.
    pub async fn node_event(
        &self,
        kind: EventKind,
        reason: &str,
        note: &str,
    ) -> Result<(), KubeError> {
        let now = Time(Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", self.node_name, now.0.as_nanosecond())),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node_name.clone()),
                // The kubelet names its node in events by name, not by UID, too.
                uid: Some(self.node_name.clone()),
                ..Default::default()
            },
            type_: Some(kind.as_str().into()),
            reason: Some(reason.into()),
            message: Some(note.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(REPORTING_COMPONENT.into()),
                host: Some(self.node_name.clone()),
            }),
            reporting_component: Some(REPORTING_COMPONENT.into()),
            reporting_instance: Some(self.node_name.clone()),
            ..Default::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        events
            .create(&PostParams::default(), &event)
            .await
            .map_err(|source| api_error("record event on", self.node_ref(), source))?;
        Ok(())
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn node_ref(&self) -> String {
        format!("node {}", self.node_name)
    }
}

/// The API server's answer to a patch whose UID differs from the object's.
fn is_uid_rejection(status: &kube::core::Status) -> bool {
    let causes = status.details.iter().flat_map(|d| &d.causes);
    status.code == 422 && causes.into_iter().any(|c| c.field == "metadata.uid")
}

fn api_error(action: &'static str, object: String, source: kube::Error) -> KubeError {
    KubeError::Api {
        action,
        object,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    fn pod_with_limits(limits: &[(&str, &str)]) -> Pod {
        let limits = limits
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect();
        let first = Container {
            name: "app".into(),
            resources: Some(ResourceRequirements {
                limits: Some(limits),
                ..Default::default()
            }),
            ..Default::default()
        };
        let second = Container {
            name: "sidecar".into(),
            ..Default::default()
        };
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![first, second],
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn branch_pods_are_known_by_the_first_containers_limits() {
        assert!(wants_branch(&pod_with_limits(&[(POD_ENI_RESOURCE, "1")])));
        assert!(!wants_branch(&pod_with_limits(&[("cpu", "1")])));
        let mut second_only = pod_with_limits(&[]);
        second_only.spec.as_mut().unwrap().containers[1].resources = Some(ResourceRequirements {
            limits: Some([(POD_ENI_RESOURCE.to_string(), Quantity("1".into()))].into()),
            ..Default::default()
        });
        assert!(!wants_branch(&second_only));
    }

    #[test]
    fn branch_of_reads_and_validates_the_annotation() {
        let mut pod = pod_with_limits(&[(POD_ENI_RESOURCE, "1")]);
        assert_eq!(branch_of(&pod, 9).unwrap(), None);

        let value = r#"[{"eniId":"eni-0a","ifAddress":"02:00:00:00:00:01","privateIp":"10.0.1.5",
            "vlanId":3,"subnetCidr":"10.0.1.0/24"}]"#;
        pod.metadata.annotations = Some([(POD_ENI_ANNOTATION.to_string(), value.into())].into());
        assert_eq!(branch_of(&pod, 9).unwrap().unwrap().vlan_id, 3);

        let err = branch_of(&pod, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod shop/web: pod-eni annotation entry 0: vlanId 3 is above the trunk's highest id 2"
        );
    }
}
