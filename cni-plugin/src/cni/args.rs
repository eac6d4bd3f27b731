//! `CNI_ARGS`: `;`-separated `KEY=VALUE` pairs.
//!
//! Rules, chosen to match what kubelet, containerd and podman send:
//! - pairs may come in any order; each is split on its first `=`, so values may contain `=`;
//! - empty values are allowed (`K8S_POD_INFRA_CONTAINER_ID=` means "not given");
//! - empty segments (a trailing `;`) are skipped;
//! - unknown keys never fail, with or without `IgnoreUnknown`: runtimes hand the same
//!   arguments to every plugin of a chain, and refusing a key meant for another plugin only
//!   breaks pods. `IgnoreUnknown` is still parsed (`1`/`true`/`True`, `0`/`false`) so a
//!   malformed value is reported;
//! - a segment without `=`, or with an empty key, is malformed. ADD and CHECK refuse it (CNI
//!   error 4, naming `CNI_ARGS`); DEL keeps the well-formed pairs and goes on, because a DEL
//!   that can never succeed would wedge the pod's deletion.

/// The keys this plugin reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_infra_container_id: String,
    pub pod_uid: String,
    pub ignore_unknown: bool,
    /// Keys present but not read by this plugin, for debug logs.
    pub unknown: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("CNI_ARGS: malformed pair {0:?}: want KEY=VALUE")]
    Malformed(String),
    #[error("CNI_ARGS: IgnoreUnknown={0:?} is not a boolean")]
    BadBool(String),
}

impl PodArgs {
    /// Strict parse for ADD and CHECK: the first malformed pair is an error.
    pub fn parse(raw: &str) -> Result<PodArgs, ArgsError> {
        let (args, errors) = Self::parse_lenient(raw);
        match errors.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(args),
        }
    }

    /// Lenient parse for DEL: keeps every well-formed pair and returns the problems found.
    pub fn parse_lenient(raw: &str) -> (PodArgs, Vec<ArgsError>) {
        let mut args = PodArgs::default();
        let mut errors = Vec::new();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    if let Err(err) = args.set(key, value) {
                        errors.push(err);
                    }
                }
                _ => errors.push(ArgsError::Malformed(pair.to_string())),
            }
        }
        (args, errors)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), ArgsError> {
        match key {
            "K8S_POD_NAME" => self.pod_name = value.to_string(),
            "K8S_POD_NAMESPACE" => self.pod_namespace = value.to_string(),
            "K8S_POD_INFRA_CONTAINER_ID" => self.pod_infra_container_id = value.to_string(),
            "K8S_POD_UID" => self.pod_uid = value.to_string(),
            "IgnoreUnknown" => self.ignore_unknown = parse_bool(value)?,
            _ => self.unknown.push(key.to_string()),
        }
        Ok(())
    }

    /// The infra container id, falling back to CNI_CONTAINERID when the runtime sent none.
    pub fn infra_container_id<'a>(&'a self, container_id: &'a str) -> &'a str {
        if self.pod_infra_container_id.is_empty() {
            container_id
        } else {
            &self.pod_infra_container_id
        }
    }
}

/// Booleans as libcni reads them: case-insensitive "1"/"true" and "0"/"false".
fn parse_bool(value: &str) -> Result<bool, ArgsError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(ArgsError::BadBool(value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBELET: &str = "K8S_POD_UID=uid-a;IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;\
                           K8S_POD_NAME=pod-a;K8S_POD_INFRA_CONTAINER_ID=c-aaaa";

    #[test]
    fn reads_kubelet_args_in_any_order() {
        let args = PodArgs::parse(KUBELET).unwrap();
        assert_eq!(args.pod_uid, "uid-a");
        assert_eq!(args.pod_namespace, "ns1");
        assert_eq!(args.pod_name, "pod-a");
        assert_eq!(args.pod_infra_container_id, "c-aaaa");
        assert!(args.ignore_unknown);
    }

    #[test]
    fn ignore_unknown_truthy_variants() {
        for value in ["1", "true", "True", "TRUE"] {
            let args = PodArgs::parse(&format!("IgnoreUnknown={value}")).unwrap();
            assert!(args.ignore_unknown, "{value}");
        }
        for value in ["0", "false", "False"] {
            let args = PodArgs::parse(&format!("IgnoreUnknown={value}")).unwrap();
            assert!(!args.ignore_unknown, "{value}");
        }
        assert_eq!(
            PodArgs::parse("IgnoreUnknown=yes"),
            Err(ArgsError::BadBool("yes".into()))
        );
    }

    #[test]
    fn unknown_keys_never_fail() {
        let with = PodArgs::parse("IgnoreUnknown=true;K8S_POD_NAME=pod-a;FOO=bar").unwrap();
        let without = PodArgs::parse("K8S_POD_NAME=pod-a;FOO=bar").unwrap();
        assert_eq!(with.pod_name, "pod-a");
        assert_eq!(without.pod_name, "pod-a");
        assert_eq!(without.unknown, ["FOO"]);
    }

    #[test]
    fn empty_values_and_values_with_equals() {
        let args = PodArgs::parse("K8S_POD_INFRA_CONTAINER_ID=;K8S_POD_NAME=a=b=c").unwrap();
        assert_eq!(args.pod_infra_container_id, "");
        assert_eq!(args.infra_container_id("c-1"), "c-1");
        assert_eq!(args.pod_name, "a=b=c");
    }

    #[test]
    fn empty_args_and_trailing_separator() {
        assert_eq!(PodArgs::parse("").unwrap(), PodArgs::default());
        assert_eq!(PodArgs::parse("K8S_POD_NAME=p;").unwrap().pod_name, "p");
    }

    #[test]
    fn malformed_pair_is_an_error_strictly_and_skipped_leniently() {
        let raw = "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME;=x";
        assert_eq!(
            PodArgs::parse(raw),
            Err(ArgsError::Malformed("K8S_POD_NAME".into()))
        );
        let (args, errors) = PodArgs::parse_lenient(raw);
        assert_eq!(args.pod_namespace, "ns1");
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn error_names_the_variable() {
        let err = PodArgs::parse("oops").unwrap_err();
        assert!(err.to_string().starts_with("CNI_ARGS"), "{err}");
    }
}
