//! ipamd: configured by environment only, logs per AWS_VPC_K8S_CNI_LOG_FILE.
//!
//!   ipamd          run the daemon
//!   ipamd init     install the plugin binary and set node sysctls (the init container)
//!   ipamd probe    exit 0 when the daemon's gRPC health service reports SERVING

use std::process::ExitCode;
use std::time::Duration;

use ipamd::config::Config;
use ipamd::firewall::FirewallConfig;
use ipamd::install::{InstallConfig, DISABLE_TCP_EARLY_DEMUX};

const USAGE: &str = "usage: ipamd [init | probe [--timeout-seconds N]]\n\
    Configured by aws-node's environment variables; see the README.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ipamd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let install = match InstallConfig::from_lookup(|n| std::env::var(n).ok(), &config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ipamd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let firewall = match FirewallConfig::from_lookup(|n| std::env::var(n).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ipamd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match args.first().map(String::as_str) {
        None => daemon(config, install, firewall),
        Some("init") => init(&config, &install),
        Some("probe") => probe(&config, &args[1..]),
        Some(other) => {
            eprintln!("ipamd: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

fn daemon(config: Config, install: InstallConfig, firewall: FirewallConfig) -> ExitCode {
    if let Err(e) = ipamd::logging::init(&config) {
        eprintln!("ipamd: open log: {e}");
        return ExitCode::FAILURE;
    }
    // Two workers: ipamd mostly waits on EC2 and the kernel; more threads only cost memory.
    let rt = match runtime(2) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ipamd: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node_name = config.pod_eni.node_name.clone();
    let kubeconfig = config.pod_eni.kubeconfig.clone();
    match rt.block_on(ipamd::daemon::run(config, install, firewall)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = e.to_string();
            tracing::error!(error = %e, "ipamd failed");
            eprintln!("ipamd: {e}");
            rt.block_on(report_failure(node_name, kubeconfig, &e));
            ExitCode::FAILURE
        }
    }
}

/// Puts why ipamd could not run on the Node as a Warning event (what `kubectl describe node`
/// shows beside NotReady), when ipamd knows its node and can reach the API server in time.
async fn report_failure(node: Option<String>, kubeconfig: Option<std::path::PathBuf>, error: &str) {
    use ipamd::sgp::kube::{client, EventKind, NodeClient};
    let Some(node) = node else {
        return;
    };
    let post = async {
        let client = client(kubeconfig.as_deref()).await.ok()?;
        let note = format!("ipamd could not start: {error}");
        NodeClient::new(client, &node)
            .node_event(EventKind::Warning, "IpamdStartFailed", &note)
            .await
            .ok()
    };
    if tokio::time::timeout(Duration::from_secs(5), post)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        tracing::warn!(node = %node, "could not record the failure as a node event");
    }
}

fn init(config: &Config, install: &InstallConfig) -> ExitCode {
    let _ = ipamd::logging::init(config);
    let disable = std::env::var(DISABLE_TCP_EARLY_DEMUX).is_ok_and(|v| v == "true");
    let result = runtime(1).map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(ipamd::node_init::run(install, disable))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipamd init: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(config: &Config, args: &[String]) -> ExitCode {
    let seconds = match args {
        [] => 5,
        [flag, n] if flag == "--timeout-seconds" => match n.parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("ipamd probe: --timeout-seconds takes a whole number\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let deadline = Duration::from_secs(seconds);
    let result = runtime(1).map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(ipamd::probe::check(&config.socket_path, deadline))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipamd probe: {e}");
            ExitCode::FAILURE
        }
    }
}
