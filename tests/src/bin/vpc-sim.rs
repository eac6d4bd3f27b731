//! vpc-sim: a local VPC for the integration suites. See `harness::sim`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use harness::sim::{run, Options};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "vpc-sim",
    about = "Simulate one AWS VPC with EC2, IMDS and its datapath"
)]
struct Args {
    /// Scenario file (JSON) describing the VPC, subnets, security groups and instances.
    #[arg(long)]
    scenario: PathBuf,
    /// Directory for sim.json.
    #[arg(long)]
    run_dir: PathBuf,
    /// Prefix of every network namespace created (default vpcsim<pid>).
    #[arg(long)]
    netns_prefix: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let opts = Options {
        scenario: args.scenario,
        run_dir: args.run_dir,
        netns_prefix: args
            .netns_prefix
            .unwrap_or_else(|| format!("vpcsim{}", std::process::id())),
    };
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each error's message already carries its cause.
            eprintln!("vpc-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
