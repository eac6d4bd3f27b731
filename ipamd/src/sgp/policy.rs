//! The SecurityGroupPolicy custom resource and how a pod is matched against it.
//!
//! Matching follows the VPC Resource Controller: only policies in the pod's namespace count; a
//! policy needs at least one selector and at least one group; every selector it has must match
//! (the pod selector against the pod's labels, the service-account selector against the labels
//! of the pod's ServiceAccount object); the groups of all matching policies are joined in
//! first-seen order without duplicates. Policies are visited in name order so the result does
//! not depend on the order a cache returns them in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The ServiceAccount a pod runs as when its spec names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("selector requirement on {key}: operator {operator} needs at least one value")]
    MissingValues { key: String, operator: String },
    #[error("selector requirement on {key}: operator {operator} takes no values")]
    UnexpectedValues { key: String, operator: String },
    #[error("selector requirement on {key}: unknown operator {operator}")]
    UnknownOperator { key: String, operator: String },
    #[error("pod {namespace}/{pod}: service account {service_account} is not known")]
    ServiceAccountUnknown {
        namespace: String,
        pod: String,
        service_account: String,
    },
}

/// Which pods of its namespace get which security groups on their branch ENI.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vpcresources.k8s.aws",
    version = "v1beta1",
    kind = "SecurityGroupPolicy",
    namespaced,
    shortname = "sgp"
)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroupPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<LabelSelector>,
    #[serde(default)]
    pub security_groups: GroupIds,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupIds {
    #[serde(default)]
    pub group_ids: Vec<String>,
}

/// The outcome of matching one pod: its groups and the policies that contributed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodGroups {
    pub groups: Vec<String>,
    pub policies: Vec<String>,
}

/// Whether `labels` satisfy `selector`, with Kubernetes' semantics: matchLabels and every
/// matchExpression must all hold, and a selector with neither matches everything.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, PolicyError> {
    let mut matched = true;
    for (key, value) in selector.match_labels.iter().flatten() {
        matched &= labels.get(key) == Some(value);
    }
    // Every requirement is checked even after a miss, so a malformed one is always reported.
    for requirement in selector.match_expressions.iter().flatten() {
        matched &= requirement_matches(requirement, labels)?;
    }
    Ok(matched)
}

fn requirement_matches(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Result<bool, PolicyError> {
    let key = || requirement.key.clone();
    let operator = || requirement.operator.clone();
    let needs_values = match requirement.operator.as_str() {
        "In" | "NotIn" => true,
        "Exists" | "DoesNotExist" => false,
        _ => {
            return Err(PolicyError::UnknownOperator {
                key: key(),
                operator: operator(),
            })
        }
    };
    let values = requirement.values.as_deref().unwrap_or_default();
    if needs_values && values.is_empty() {
        return Err(PolicyError::MissingValues {
            key: key(),
            operator: operator(),
        });
    }
    if !needs_values && !values.is_empty() {
        return Err(PolicyError::UnexpectedValues {
            key: key(),
            operator: operator(),
        });
    }
    let value = labels.get(&requirement.key);
    let in_values = value.is_some_and(|v| values.contains(v));
    Ok(match requirement.operator.as_str() {
        "In" => in_values,
        "NotIn" => !in_values,
        "Exists" => value.is_some(),
        _ => value.is_none(),
    })
}

impl SecurityGroupPolicy {
    /// A policy with no selector, or without groups, selects nothing.
    pub fn is_usable(&self) -> bool {
        let has_selector =
            self.spec.pod_selector.is_some() || self.spec.service_account_selector.is_some();
        has_selector && !self.spec.security_groups.group_ids.is_empty()
    }

    /// Whether this policy selects a pod with `pod_labels` running as a ServiceAccount with
    /// `sa_labels`. The namespace is not checked here.
    pub fn selects(
        &self,
        pod_labels: &BTreeMap<String, String>,
        sa_labels: &BTreeMap<String, String>,
    ) -> Result<bool, PolicyError> {
        if !self.is_usable() {
            return Ok(false);
        }
        if let Some(selector) = &self.spec.pod_selector {
            if !selector_matches(selector, pod_labels)? {
                return Ok(false);
            }
        }
        match &self.spec.service_account_selector {
            Some(selector) => selector_matches(selector, sa_labels),
            None => Ok(true),
        }
    }
}

/// The ServiceAccount a pod runs as.
pub fn service_account_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
}

/// The security groups `pod` gets from `policies` (any namespace; others are ignored).
///
/// `service_account` is the pod's ServiceAccount object when it is known. Not knowing it is an
/// error only when some policy of the namespace selects by ServiceAccount, because guessing
/// could hand the pod the wrong groups. A policy whose selector is malformed is skipped, as the
/// controller does, with a warning.
pub fn security_groups_for<'a>(
    pod: &Pod,
    policies: impl IntoIterator<Item = &'a SecurityGroupPolicy>,
    service_account: Option<&ServiceAccount>,
) -> Result<PodGroups, PolicyError> {
    let namespace = pod.namespace().unwrap_or_default();
    let mut candidates: Vec<&SecurityGroupPolicy> = policies
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()) && p.is_usable())
        .collect();
    candidates.sort_by_key(|p| p.name_any());

    let needs_sa = candidates
        .iter()
        .any(|p| p.spec.service_account_selector.is_some());
    let empty = BTreeMap::new();
    let sa_labels = match service_account {
        Some(sa) => sa.metadata.labels.as_ref().unwrap_or(&empty),
        None if needs_sa => {
            return Err(PolicyError::ServiceAccountUnknown {
                namespace,
                pod: pod.name_any(),
                service_account: service_account_name(pod).to_string(),
            })
        }
        None => &empty,
    };
    let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);

    let mut result = PodGroups::default();
    for policy in candidates {
        match policy.selects(pod_labels, sa_labels) {
            Ok(true) => result.add(policy),
            Ok(false) => {}
            Err(error) => tracing::warn!(
                namespace = %namespace,
                policy = %policy.name_any(),
                %error,
                "skipping security group policy with a malformed selector"
            ),
        }
    }
    Ok(result)
}

impl PodGroups {
    fn add(&mut self, policy: &SecurityGroupPolicy) {
        self.policies.push(policy.name_any());
        for group in &policy.spec.security_groups.group_ids {
            if !self.groups.contains(group) {
                self.groups.push(group.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn with_exprs(exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(exprs),
            match_labels: None,
        }
    }

    fn with_labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_expressions: None,
            match_labels: Some(labels(pairs)),
        }
    }

    fn policy(
        ns: &str,
        name: &str,
        pod: Option<LabelSelector>,
        sa: Option<LabelSelector>,
        groups: &[&str],
    ) -> SecurityGroupPolicy {
        let mut p = SecurityGroupPolicy::new(
            name,
            SecurityGroupPolicySpec {
                pod_selector: pod,
                service_account_selector: sa,
                security_groups: GroupIds {
                    group_ids: groups.iter().map(|g| g.to_string()).collect(),
                },
            },
        );
        p.metadata.namespace = Some(ns.into());
        p
    }

    fn pod(ns: &str, pod_labels: &[(&str, &str)], sa: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some(ns.into()),
                labels: Some(labels(pod_labels)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: sa.map(Into::into),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn sa(ns: &str, name: &str, sa_labels: &[(&str, &str)]) -> ServiceAccount {
        ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(labels(sa_labels)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let all = LabelSelector::default();
        assert_eq!(selector_matches(&all, &labels(&[])), Ok(true));
        assert_eq!(selector_matches(&all, &labels(&[("a", "b")])), Ok(true));
        let empty_lists = LabelSelector {
            match_labels: Some(BTreeMap::new()),
            match_expressions: Some(vec![]),
        };
        assert_eq!(selector_matches(&empty_lists, &labels(&[])), Ok(true));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let sel = with_labels(&[("app", "web"), ("tier", "front")]);
        let both = labels(&[("app", "web"), ("tier", "front"), ("x", "y")]);
        assert_eq!(selector_matches(&sel, &both), Ok(true));
        assert_eq!(
            selector_matches(&sel, &labels(&[("app", "web")])),
            Ok(false)
        );
        let wrong = labels(&[("app", "web"), ("tier", "back")]);
        assert_eq!(selector_matches(&sel, &wrong), Ok(false));
    }

    #[test]
    fn operator_in() {
        let sel = with_exprs(vec![expr("env", "In", &["prod", "stage"])]);
        assert_eq!(
            selector_matches(&sel, &labels(&[("env", "prod")])),
            Ok(true)
        );
        assert_eq!(
            selector_matches(&sel, &labels(&[("env", "stage")])),
            Ok(true)
        );
        assert_eq!(
            selector_matches(&sel, &labels(&[("env", "dev")])),
            Ok(false)
        );
        assert_eq!(selector_matches(&sel, &labels(&[])), Ok(false));
    }

    #[test]
    fn operator_not_in_matches_missing_key() {
        let sel = with_exprs(vec![expr("env", "NotIn", &["prod"])]);
        assert_eq!(selector_matches(&sel, &labels(&[("env", "dev")])), Ok(true));
        assert_eq!(selector_matches(&sel, &labels(&[])), Ok(true));
        assert_eq!(
            selector_matches(&sel, &labels(&[("env", "prod")])),
            Ok(false)
        );
    }

    #[test]
    fn operators_exists_and_does_not_exist() {
        let exists = with_exprs(vec![expr("team", "Exists", &[])]);
        let absent = with_exprs(vec![expr("team", "DoesNotExist", &[])]);
        let with_team = labels(&[("team", "")]);
        assert_eq!(selector_matches(&exists, &with_team), Ok(true));
        assert_eq!(selector_matches(&exists, &labels(&[])), Ok(false));
        assert_eq!(selector_matches(&absent, &with_team), Ok(false));
        assert_eq!(
            selector_matches(&absent, &labels(&[("other", "x")])),
            Ok(true)
        );
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                expr("env", "In", &["prod"]),
                expr("canary", "DoesNotExist", &[]),
            ]),
        };
        let ok = labels(&[("app", "web"), ("env", "prod")]);
        assert_eq!(selector_matches(&sel, &ok), Ok(true));
        let canary = labels(&[("app", "web"), ("env", "prod"), ("canary", "1")]);
        assert_eq!(selector_matches(&sel, &canary), Ok(false));
        assert_eq!(
            selector_matches(&sel, &labels(&[("env", "prod")])),
            Ok(false)
        );
    }

    #[test]
    fn malformed_requirements_are_errors() {
        let no_values = with_exprs(vec![expr("env", "In", &[])]);
        assert!(matches!(
            selector_matches(&no_values, &labels(&[])),
            Err(PolicyError::MissingValues { .. })
        ));
        let not_in_no_values = with_exprs(vec![expr("env", "NotIn", &[])]);
        assert!(selector_matches(&not_in_no_values, &labels(&[])).is_err());
        let extra = with_exprs(vec![expr("env", "Exists", &["x"])]);
        assert!(matches!(
            selector_matches(&extra, &labels(&[("env", "x")])),
            Err(PolicyError::UnexpectedValues { .. })
        ));
        let unknown = with_exprs(vec![expr("env", "Gt", &["1"])]);
        let err = selector_matches(&unknown, &labels(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "selector requirement on env: unknown operator Gt"
        );
    }

    #[test]
    fn pod_selector_only() {
        let policies = [policy(
            "shop",
            "catalog",
            Some(with_labels(&[("app", "catalog")])),
            None,
            &["sg-a"],
        )];
        let catalog = pod("shop", &[("app", "catalog")], None);
        let got = security_groups_for(&catalog, &policies, None).unwrap();
        assert_eq!(got.groups, ["sg-a"]);
        assert_eq!(got.policies, ["catalog"]);
        let other = pod("shop", &[("app", "cart")], None);
        assert!(security_groups_for(&other, &policies, None)
            .unwrap()
            .groups
            .is_empty());
    }

    #[test]
    fn service_account_selector_only() {
        let policies = [policy(
            "shop",
            "db",
            None,
            Some(with_labels(&[("db", "yes")])),
            &["sg-db"],
        )];
        let p = pod("shop", &[], Some("reader"));
        let reader = sa("shop", "reader", &[("db", "yes")]);
        let got = security_groups_for(&p, &policies, Some(&reader)).unwrap();
        assert_eq!(got.groups, ["sg-db"]);
        let plain = sa("shop", "reader", &[]);
        assert!(security_groups_for(&p, &policies, Some(&plain))
            .unwrap()
            .groups
            .is_empty());
    }

    #[test]
    fn both_selectors_must_match() {
        let policies = [policy(
            "shop",
            "both",
            Some(with_labels(&[("app", "web")])),
            Some(with_labels(&[("db", "yes")])),
            &["sg-both"],
        )];
        let db = sa("shop", "default", &[("db", "yes")]);
        let nodb = sa("shop", "default", &[]);
        let web = pod("shop", &[("app", "web")], None);
        let api = pod("shop", &[("app", "api")], None);
        let groups = |p: &Pod, s: &ServiceAccount| {
            security_groups_for(p, &policies, Some(s)).unwrap().groups
        };
        assert_eq!(groups(&web, &db), ["sg-both"]);
        assert!(groups(&web, &nodb).is_empty());
        assert!(groups(&api, &db).is_empty());
        assert!(groups(&api, &nodb).is_empty());
    }

    #[test]
    fn empty_pod_selector_selects_every_pod_of_the_namespace() {
        let policies = [policy(
            "shop",
            "all",
            Some(LabelSelector::default()),
            None,
            &["sg-all"],
        )];
        let got = security_groups_for(&pod("shop", &[], None), &policies, None).unwrap();
        assert_eq!(got.groups, ["sg-all"]);
    }

    #[test]
    fn policies_of_other_namespaces_are_ignored() {
        let policies = [policy(
            "other",
            "all",
            Some(LabelSelector::default()),
            None,
            &["sg-x"],
        )];
        let got = security_groups_for(&pod("shop", &[], None), &policies, None).unwrap();
        assert_eq!(got, PodGroups::default());
    }

    #[test]
    fn unusable_policies_select_nothing() {
        let no_selector = policy("shop", "a", None, None, &["sg-a"]);
        let no_groups = policy("shop", "b", Some(LabelSelector::default()), None, &[]);
        let policies = [no_selector, no_groups];
        let got = security_groups_for(&pod("shop", &[], None), &policies, None).unwrap();
        assert!(got.groups.is_empty());
    }

    #[test]
    fn union_is_deduplicated_in_policy_name_order() {
        let all = || Some(LabelSelector::default());
        // Given out of order on purpose: the result follows the policy names.
        let policies = [
            policy("shop", "c-last", all(), None, &["sg-3", "sg-1"]),
            policy("shop", "a-first", all(), None, &["sg-1", "sg-2"]),
            policy("shop", "b-middle", all(), None, &["sg-2", "sg-4"]),
        ];
        let got = security_groups_for(&pod("shop", &[], None), &policies, None).unwrap();
        assert_eq!(got.groups, ["sg-1", "sg-2", "sg-4", "sg-3"]);
        assert_eq!(got.policies, ["a-first", "b-middle", "c-last"]);
    }

    #[test]
    fn malformed_policy_is_skipped_and_others_still_apply() {
        let bad = with_exprs(vec![expr("app", "In", &[])]);
        let policies = [
            policy("shop", "bad", Some(bad), None, &["sg-bad"]),
            policy(
                "shop",
                "good",
                Some(LabelSelector::default()),
                None,
                &["sg-good"],
            ),
        ];
        let got = security_groups_for(&pod("shop", &[], None), &policies, None).unwrap();
        assert_eq!(got.groups, ["sg-good"]);
    }

    #[test]
    fn unknown_service_account_is_an_error_only_when_needed() {
        let by_pod = policy("shop", "a", Some(LabelSelector::default()), None, &["sg-a"]);
        let by_sa = policy("shop", "b", None, Some(LabelSelector::default()), &["sg-b"]);
        let p = pod("shop", &[], Some("reader"));
        let got = security_groups_for(&p, [&by_pod], None).unwrap();
        assert_eq!(got.groups, ["sg-a"]);
        let err = security_groups_for(&p, [&by_pod, &by_sa], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod shop/web-0: service account reader is not known"
        );
    }

    #[test]
    fn service_account_defaults_to_default() {
        assert_eq!(service_account_name(&pod("shop", &[], None)), "default");
        assert_eq!(service_account_name(&pod("shop", &[], Some(""))), "default");
        assert_eq!(
            service_account_name(&pod("shop", &[], Some("reader"))),
            "reader"
        );
    }

    #[test]
    fn spec_reads_upstream_json() {
        let json = serde_json::json!({
            "apiVersion": "vpcresources.k8s.aws/v1beta1",
            "kind": "SecurityGroupPolicy",
            "metadata": {"name": "catalog", "namespace": "shop"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "catalog"}},
                "securityGroups": {"groupIds": ["sg-catalog"]}
            }
        });
        let p: SecurityGroupPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(p.spec.security_groups.group_ids, ["sg-catalog"]);
        assert!(p.spec.service_account_selector.is_none());
        assert_eq!(
            p.spec.pod_selector,
            Some(with_labels(&[("app", "catalog")]))
        );
    }
}
