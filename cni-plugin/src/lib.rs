//! The vpc-cni plugin as a library: CNI protocol types, netlink plumbing, the ipamd client
//! and one function per CNI verb. The `vpc-cni` binary is a thin shell around [`run`].

pub mod cni;
pub mod commands;
pub mod ipamd;
pub mod logging;
pub mod names;
pub mod netlink;
pub mod plumbing;

use std::io::Read;

use cni::reply::VersionReply;
use cni::{CniEnv, Command, NetConf, Version};
use commands::{Error, Output};

/// What the process prints on stdout and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Option<String>,
    pub exit_code: u8,
}

/// One plugin invocation: environment through `var`, network config on `stdin`.
pub fn run(var: impl Fn(&str) -> Option<String>, mut stdin: impl Read) -> Outcome {
    let mut input = Vec::new();
    let read = stdin.read_to_end(&mut input);
    let version = reply_version(&input);
    let env = match CniEnv::from_vars(var) {
        Ok(env) => env,
        Err(e) => return failure(&Error::Env(e), &version),
    };
    if let Err(e) = read {
        return failure(&Error::Stdin(e), &version);
    }
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<serde_json::Value>(&input).ok();
        let requested = requested.as_ref().and_then(|v| v["cniVersion"].as_str());
        return success(Output::Result(serde_json::json!(VersionReply::new(
            requested
        ))));
    }
    let conf = match NetConf::parse(&input) {
        Ok(conf) => conf,
        Err(e) => return failure(&Error::Conf(e), &version),
    };
    logging::init(&conf);
    let span = tracing::info_span!(
        "cni",
        command = %env.command,
        container_id = %env.container_id,
        ifname = %env.ifname,
        netns = ?env.netns,
    );
    let _guard = span.enter();
    match execute(&env, &conf) {
        Ok(output) => success(output),
        Err(err) => {
            tracing::error!(code = err.code(), error = %err, "failed");
            failure(&err, &version)
        }
    }
}

fn execute(env: &CniEnv, conf: &NetConf) -> Result<Output, Error> {
    // One thread: the only namespace work, opening the pod's netlink socket, switches this
    // thread in and straight back.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(commands::execute(env, conf))
}

/// Errors are reported in the version the runtime asked for when it names one we can parse.
fn reply_version(input: &[u8]) -> String {
    let value: Option<serde_json::Value> = serde_json::from_slice(input).ok();
    value
        .as_ref()
        .and_then(|v| v["cniVersion"].as_str())
        .filter(|v| v.parse::<Version>().is_ok())
        .map_or_else(|| cni::version::LATEST.to_string(), str::to_string)
}

fn success(output: Output) -> Outcome {
    let stdout = match output {
        Output::Result(value) => Some(value.to_string()),
        Output::Nothing => None,
    };
    Outcome {
        stdout,
        exit_code: 0,
    }
}

fn failure(err: &Error, version: &str) -> Outcome {
    let reply = serde_json::to_string(&err.reply(version)).expect("error reply serialises");
    Outcome {
        stdout: Some(reply),
        exit_code: 1,
    }
}
