//! Security groups for pods (ENABLE_POD_ENI): a pod selected by a SecurityGroupPolicy gets its
//! own branch ENI with the policy's groups, reached through a VLAN on the node's trunk ENI.
//!
//! This module holds the Kubernetes side and the pure rules: the policy resource and pod
//! matching, the pod-eni annotation, VLAN ids on the trunk, and the warm branch arithmetic.

pub mod annotation;
pub mod kube;
pub mod limits;
pub mod manager;
pub mod policy;
pub mod pool;
pub mod restore;
pub mod service;
pub mod trunk;
pub mod vlan;
pub mod warm;

/// `true` turns on trunk and branch ENIs (aws-node's name).
pub const ENABLE_POD_ENI: &str = "ENABLE_POD_ENI";
/// Spare branch ENIs per security-group set; default [`warm::DEFAULT_WARM_BRANCH_ENI_TARGET`].
pub const WARM_BRANCH_ENI_TARGET: &str = "WARM_BRANCH_ENI_TARGET";
/// The node's name, which the pod watch filters on (aws-node's DaemonSet sets it from
/// `spec.nodeName`).
pub const MY_NODE_NAME: &str = "MY_NODE_NAME";
/// Path of a kubeconfig; without it the in-cluster service account is used.
pub const KUBECONFIG: &str = "KUBECONFIG";
