//! The `CNI_*` environment of one invocation, validated per command as the spec requires.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// Everything the runtime passes in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// None when unset or empty (allowed for DEL: the sandbox may already be gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
    /// Parsed for completeness; this plugin delegates to no other plugin, so it never needs it
    /// and does not require it.
    pub path: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("CNI_COMMAND is not set")]
    NoCommand,
    #[error("CNI_COMMAND={0:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC")]
    UnknownCommand(String),
    #[error("{var} is required for {command}")]
    Missing { var: &'static str, command: Command },
    #[error(
        "CNI_CONTAINERID={0:?}: must start with a letter or digit, then letters, digits, _ . -"
    )]
    BadContainerId(String),
    #[error("CNI_IFNAME={0:?}: must be 1-15 bytes, not . or .., without / : or whitespace")]
    BadIfname(String),
    #[error("CNI_NETNS={0:?}: must be an absolute path")]
    BadNetns(String),
}

impl CniEnv {
    /// Reads the environment through `var` (std::env::var in the binary, a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<CniEnv, EnvError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let command = parse_command(get("CNI_COMMAND"))?;
        let env = CniEnv {
            command,
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args: get("CNI_ARGS").unwrap_or_default(),
            path: get("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
        };
        env.validate()?;
        Ok(env)
    }

    fn validate(&self) -> Result<(), EnvError> {
        let (needs_attachment, needs_netns) = match self.command {
            Command::Add | Command::Check => (true, true),
            Command::Del => (true, false),
            Command::Version | Command::Status | Command::Gc => (false, false),
        };
        if needs_attachment {
            self.require("CNI_CONTAINERID", &self.container_id)?;
            self.require("CNI_IFNAME", &self.ifname)?;
            validate_container_id(&self.container_id)?;
            validate_ifname(&self.ifname)?;
        }
        if needs_netns && self.netns.is_none() {
            return Err(EnvError::Missing {
                var: "CNI_NETNS",
                command: self.command,
            });
        }
        match &self.netns {
            Some(p) if needs_attachment && !p.is_absolute() => {
                Err(EnvError::BadNetns(p.display().to_string()))
            }
            _ => Ok(()),
        }
    }

    fn require(&self, var: &'static str, value: &str) -> Result<(), EnvError> {
        if value.is_empty() {
            return Err(EnvError::Missing {
                var,
                command: self.command,
            });
        }
        Ok(())
    }
}

fn parse_command(raw: Option<String>) -> Result<Command, EnvError> {
    match raw.as_deref() {
        None => Err(EnvError::NoCommand),
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some("STATUS") => Ok(Command::Status),
        Some("GC") => Ok(Command::Gc),
        Some(other) => Err(EnvError::UnknownCommand(other.to_string())),
    }
}

fn validate_container_id(id: &str) -> Result<(), EnvError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(EnvError::BadContainerId(id.to_string()))
    }
}

/// Linux interface name rules (dev_valid_name): below IFNAMSIZ, no '/', ':' or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), EnvError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(EnvError::BadIfname(name.to_string()))
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, EnvError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_vars(|k| map.get(k).cloned())
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c-aaaa"),
        ("CNI_NETNS", "/var/run/netns/t1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn full_add_environment() {
        let e = env(&ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns, Some(PathBuf::from("/var/run/netns/t1")));
        assert_eq!(e.path.len(), 2);
    }

    #[test]
    fn add_requires_netns_but_del_does_not() {
        let mut vars = ADD.to_vec();
        vars[2].1 = "";
        let err = env(&vars).unwrap_err();
        assert_eq!(err.to_string(), "CNI_NETNS is required for ADD");
        vars[0].1 = "DEL";
        assert_eq!(env(&vars).unwrap().netns, None);
    }

    #[test]
    fn version_status_gc_need_only_the_command() {
        for cmd in ["VERSION", "STATUS", "GC"] {
            assert!(env(&[("CNI_COMMAND", cmd)]).is_ok(), "{cmd}");
        }
    }

    #[test]
    fn command_errors_name_the_variable() {
        assert_eq!(env(&[]).unwrap_err(), EnvError::NoCommand);
        let err = env(&[("CNI_COMMAND", "add")]).unwrap_err();
        assert!(err.to_string().starts_with("CNI_COMMAND"));
    }

    #[test]
    fn container_id_rules() {
        for ok in ["a", "0abc", "a_b.c-d"] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        for bad in ["-a", "_a", "a/b", "a b", ".a"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ifname_rules() {
        for ok in ["eth0", "a", "abcdefghijklmno"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "abcdefghijklmnop", "a/b", "a:b", "a b"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_netns_is_rejected() {
        let mut vars = ADD.to_vec();
        vars[2].1 = "netns/t1";
        assert!(matches!(env(&vars), Err(EnvError::BadNetns(_))));
    }
}
