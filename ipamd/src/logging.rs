//! Log output as AWS_VPC_K8S_CNI_LOGLEVEL and AWS_VPC_K8S_CNI_LOG_FILE ask.

use std::fs::{self, OpenOptions};
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogTarget};

/// Libraries whose debug output would drown ipamd's own (every HTTP exchange with EC2).
/// Directives match targets by prefix, so "aws_" covers the whole SDK.
const QUIET: &[&str] = &[
    "aws_", "hyper", "h2", "tower", "rustls", "tonic", "axum", "kube",
];

pub fn init(config: &Config) -> std::io::Result<()> {
    let mut filter = EnvFilter::new(config.log_level.to_string());
    for lib in QUIET {
        let directive = format!("{lib}=warn").parse().expect("static directive");
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match &config.log_target {
        LogTarget::Stderr => builder.with_writer(std::io::stderr).init(),
        LogTarget::Stdout => builder.with_writer(std::io::stdout).init(),
        LogTarget::File(path) => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            builder.with_writer(Mutex::new(file)).init()
        }
    }
    Ok(())
}
