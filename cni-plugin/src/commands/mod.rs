//! One function per CNI verb, each with the same spine: decode, validate everything, ask
//! ipamd, change the kernel, report. CNI error codes are chosen in [`Error::code`] only.

mod add;
mod check;
mod del;
mod gc;
mod recorded;
mod status;

use std::path::PathBuf;

use serde_json::Value;

use crate::cni::args::ArgsError;
use crate::cni::env::EnvError;
use crate::cni::netconf::ConfError;
use crate::cni::reply::{code, ErrorReply};
use crate::cni::{CniEnv, Command, NetConf, Version};
use crate::ipamd::IpamdError;
use crate::netlink::{NetlinkError, NetnsError};
use crate::plumbing::PlumbingError;

pub use recorded::Recorded;

/// What a successful verb prints: a result document, or nothing at all.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Result(Value),
    Nothing,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("read network config from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error("{command} needs cniVersion {since} or later, config has {version}")]
    VersionTooOld {
        command: Command,
        version: Version,
        since: Version,
    },
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("CNI_NETNS: {0}")]
    Netns(#[source] NetnsError),
    #[error("CNI_NETNS={0}: is the plugin's own network namespace")]
    OwnNetns(PathBuf),
    #[error("CNI_IFNAME={ifname}: an interface of that name already exists in {netns}")]
    IfnameTaken { ifname: String, netns: PathBuf },
    #[error("{command} needs prevResult in the network config")]
    NoPrevResult { command: Command },
    #[error("prevResult has no interface {0}")]
    NotInPrevResult(String),
    #[error("start async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{context}: {source}")]
    Ipamd {
        context: String,
        #[source]
        source: IpamdError,
    },
    #[error("add pod {ifname}: ipamd has no address: {reason}")]
    NoAddress { ifname: String, reason: String },
    #[error("add pod {ifname}: ipamd reply unusable: {reason}")]
    BadReply { ifname: String, reason: String },
    #[error("add pod {ifname}: {source}")]
    Setup {
        ifname: String,
        #[source]
        source: PlumbingError,
    },
    #[error("{context}: {source}")]
    Teardown {
        context: String,
        #[source]
        source: PlumbingError,
    },
    #[error("del pod {ifname}: ipamd refused the release: {reason}")]
    ReleaseRefused { ifname: String, reason: String },
    #[error("check pod {ifname}: {what}")]
    Mismatch { ifname: String, what: String },
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("GC needs cni.dev/valid-attachments (or cni.dev/attachments) in the config")]
    NoAttachments,
}

impl Error {
    /// The one place where failures become CNI error codes.
    pub fn code(&self) -> u32 {
        match self {
            Error::Conf(ConfError::Incompatible { .. }) | Error::VersionTooOld { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            Error::Env(_) | Error::Args(_) | Error::Netns(_) | Error::OwnNetns(_) => {
                code::INVALID_ENV
            }
            Error::IfnameTaken { .. } => code::INVALID_ENV,
            Error::Stdin(_) | Error::Runtime(_) => code::IO_FAILURE,
            Error::Conf(ConfError::Json(_) | ConfError::Shape(_) | ConfError::PrevResult(_)) => {
                code::DECODE
            }
            Error::Conf(ConfError::Invalid { .. }) => code::INVALID_CONFIG,
            Error::NoPrevResult { .. } | Error::NotInPrevResult(_) | Error::NoAttachments => {
                code::INVALID_CONFIG
            }
            Error::Ipamd { source, .. } if source.is_unreachable() => code::TRY_AGAIN_LATER,
            Error::NoAddress { .. } | Error::ReleaseRefused { .. } => code::TRY_AGAIN_LATER,
            Error::Ipamd { .. } | Error::BadReply { .. } => code::IPAMD,
            Error::Netlink { .. } | Error::Setup { .. } => code::SETUP,
            Error::Teardown { .. } => code::TEARDOWN,
            Error::Mismatch { .. } => code::CHECK_MISMATCH,
            Error::NotReady(_) => code::NOT_AVAILABLE,
        }
    }

    /// A short, stable summary for `msg`; the full path goes to `details`. Where aws-node
    /// has a well-known message for the same failure, it is kept so searches still match.
    fn summary(&self) -> Option<&'static str> {
        Some(match self {
            Error::Ipamd { .. } => "failed to reach ipamd",
            Error::NoAddress { .. } => "add cmd: failed to assign an IP address to container",
            Error::BadReply { .. } => "add cmd: ipamd reply unusable",
            Error::Setup { .. } => "add command: failed to setup network",
            Error::Teardown { .. } => "del cmd: failed on tear down pod network",
            Error::ReleaseRefused { .. } => "del cmd: failed to process delete request",
            Error::Mismatch { .. } => "check cmd: pod network differs from prevResult",
            Error::NotReady(_) => "plugin not ready: ipamd cannot serve an ADD now",
            _ => return None,
        })
    }

    pub fn reply(&self, cni_version: &str) -> ErrorReply {
        let full = self.to_string();
        let (msg, details) = match self.summary() {
            Some(summary) => (summary.to_string(), full),
            None => (full, String::new()),
        };
        ErrorReply {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg,
            details,
        }
    }
}

/// Runs the verb in `env.command`. VERSION is answered before a config is parsed and never
/// reaches here.
pub async fn execute(env: &CniEnv, conf: &NetConf) -> Result<Output, Error> {
    require_version(env.command, conf.cni_version)?;
    match env.command {
        Command::Add => add::add(env, conf).await,
        Command::Del => del::del(env, conf).await,
        Command::Check => check::check(env, conf).await,
        Command::Status => status::status(conf).await,
        Command::Gc => gc::gc(conf).await,
        Command::Version => unreachable!("VERSION is answered without a config"),
    }
}

/// CHECK exists from 0.4.0, STATUS and GC from 1.1.0.
fn require_version(command: Command, version: Version) -> Result<(), Error> {
    use crate::cni::version::{CHECK_SINCE, STATUS_GC_SINCE};
    let since = match command {
        Command::Check => CHECK_SINCE,
        Command::Status | Command::Gc => STATUS_GC_SINCE,
        _ => return Ok(()),
    };
    if version < since {
        return Err(Error::VersionTooOld {
            command,
            version,
            since,
        });
    }
    Ok(())
}

fn ipamd_err(context: impl Into<String>) -> impl FnOnce(IpamdError) -> Error {
    let context = context.into();
    move |source| Error::Ipamd { context, source }
}

fn netlink_err(context: impl Into<String>) -> impl FnOnce(NetlinkError) -> Error {
    let context = context.into();
    move |source| Error::Netlink { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn codes_are_chosen_deliberately() {
        let conf_err = |s: &str| Error::Conf(crate::cni::NetConf::parse(s.as_bytes()).unwrap_err());
        assert_eq!(conf_err("{").code(), 6);
        assert_eq!(
            conf_err(r#"{"cniVersion":"1.0.0","name":"n","vethPrefix":5}"#).code(),
            6
        );
        assert_eq!(conf_err(r#"{"cniVersion":"2.0.0","name":"n"}"#).code(), 1);
        assert_eq!(
            conf_err(r#"{"cniVersion":"1.0.0","name":"n","mtu":"1"}"#).code(),
            7
        );
        assert_eq!(Error::Env(EnvError::NoCommand).code(), 4);
        assert_eq!(Error::Args(ArgsError::Malformed("x".into())).code(), 4);
        let down = IpamdError::Unreachable {
            socket: "/s".into(),
            reason: "gone".into(),
        };
        assert_eq!(
            Error::Ipamd {
                context: "add".into(),
                source: down
            }
            .code(),
            11
        );
        let slow = IpamdError::Deadline {
            rpc: "AddNetwork",
            after: Duration::from_secs(20),
        };
        assert_eq!(
            Error::Ipamd {
                context: "add".into(),
                source: slow
            }
            .code(),
            11
        );
        let skew = IpamdError::VersionMismatch {
            rpc: "AddNetwork",
            message: "0.1 vs 0.2".into(),
        };
        assert_eq!(
            Error::Ipamd {
                context: "add".into(),
                source: skew
            }
            .code(),
            100
        );
        assert_eq!(
            Error::NoAddress {
                ifname: "eth0".into(),
                reason: "empty".into()
            }
            .code(),
            11
        );
        assert_eq!(Error::NotReady("x".into()).code(), 50);
        assert_eq!(
            Error::NoPrevResult {
                command: Command::Check
            }
            .code(),
            7
        );
        let old = Error::VersionTooOld {
            command: Command::Gc,
            version: Version::new(1, 0, 0),
            since: Version::new(1, 1, 0),
        };
        assert_eq!(old.code(), 1);
    }

    #[test]
    fn reply_keeps_summary_and_full_path() {
        let err = Error::NoAddress {
            ifname: "eth0".into(),
            reason: "pool empty".into(),
        };
        let reply = err.reply("1.0.0");
        assert_eq!(
            reply.msg,
            "add cmd: failed to assign an IP address to container"
        );
        assert_eq!(
            reply.details,
            "add pod eth0: ipamd has no address: pool empty"
        );
        let env = Error::Env(EnvError::NoCommand).reply("0.4.0");
        assert_eq!(env.msg, "CNI_COMMAND is not set");
        assert!(env.details.is_empty());
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["cniVersion"], "0.4.0");
        assert_eq!(json["code"], 4);
        assert!(json.get("details").is_none());
    }

    #[test]
    fn verbs_need_their_minimum_version() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert!(require_version(Command::Check, v("0.3.1")).is_err());
        assert!(require_version(Command::Check, v("0.4.0")).is_ok());
        assert!(require_version(Command::Gc, v("1.0.0")).is_err());
        assert!(require_version(Command::Status, v("1.1.0")).is_ok());
        assert!(require_version(Command::Add, v("0.3.1")).is_ok());
    }
}
