//! Plugin logs: to `pluginLogFile` when set and writable, else stderr. Never stdout, which
//! carries the one JSON document the runtime reads.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cni::netconf::{LogLevel, NetConf};

/// Installs the global subscriber once; later calls (tests) keep the first one.
pub fn init(conf: &NetConf) {
    let level = match conf.log_level {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    };
    // The configured level is for this plugin's own events; the gRPC stack's debug output
    // (every HTTP/2 frame) would drown them, so libraries log warnings only. A plain target
    // filter: EnvFilter's directive parsing costs more than the rest of a pod's logging.
    let filter = Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target("vpc_cni", level);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false);
    let file = conf
        .log_file
        .as_deref()
        .filter(|p| !is_std_stream(p))
        .and_then(open_log);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match file {
        Some(file) => registry.with(fmt.with_writer(Mutex::new(file))).try_init(),
        None => registry.with(fmt.with_writer(std::io::stderr)).try_init(),
    };
}

/// aws-node accepts "stdout" and "stderr" as file names; both mean stderr here.
fn is_std_stream(path: &Path) -> bool {
    matches!(path.to_str(), Some("stdout" | "stderr"))
}

/// A log file that cannot be opened must not fail the pod; stderr takes over.
fn open_log(path: &Path) -> Option<std::fs::File> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match OpenOptions::new().create(true).append(true).open(path) {
        Ok(file) => Some(file),
        Err(err) => {
            eprintln!(
                "vpc-cni: cannot open log file {}: {err}; logging to stderr",
                path.display()
            );
            None
        }
    }
}
