//! ipamd: configured by environment only, logs per AWS_VPC_K8S_CNI_LOG_FILE.

use std::process::ExitCode;

use ipamd::config::Config;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ipamd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = ipamd::logging::init(&config) {
        eprintln!("ipamd: open log: {e}");
        return ExitCode::FAILURE;
    }
    // Two workers: ipamd mostly waits on EC2 and the kernel; more threads only cost memory.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt
            .block_on(ipamd::daemon::run(config))
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("tokio runtime: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ipamd failed");
            eprintln!("ipamd: {e}");
            ExitCode::FAILURE
        }
    }
}
