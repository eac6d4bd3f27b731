//! vpc-sim: a local VPC for the integration suites. See `harness::sim`.
//!
//! `vpc-sim --scenario FILE --run-dir DIR [--netns-prefix P]` runs the simulator; the
//! subcommands are small tools for tests and scripts around it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use harness::sim::{client, run, tcp, Options};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "vpc-sim",
    about = "Simulate one AWS VPC with EC2, IMDS and its datapath",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    tool: Option<Tool>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Scenario file (JSON) describing the VPC, subnets, security groups and instances.
    #[arg(long, required = true)]
    scenario: Option<PathBuf>,
    /// Directory for sim.json.
    #[arg(long, required = true)]
    run_dir: Option<PathBuf>,
    /// Prefix of every network namespace created (default vpcsim<pid>).
    #[arg(long)]
    netns_prefix: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Answer every TCP connection with "ok\n" until killed (run it with ip netns exec).
    TcpListen {
        #[arg(long)]
        port: u16,
        /// Address to listen on; off loopback only inside a network namespace.
        #[arg(long, default_value = "0.0.0.0")]
        addr: IpAddr,
    },
    /// Connect and read "ok\n"; exit 0 only when both happen within the timeout.
    TcpConnect {
        /// ADDR:PORT
        target: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Make one EC2 Query API call to a running simulator and print the XML answer.
    Ec2(Ec2Args),
}

#[derive(Debug, Args)]
struct Ec2Args {
    /// EC2 endpoint, http://127.0.0.1:PORT.
    #[arg(
        long,
        conflicts_with = "sim_json",
        required_unless_present = "sim_json"
    )]
    endpoint: Option<String>,
    /// Take the endpoint from a simulator's sim.json.
    #[arg(long)]
    sim_json: Option<PathBuf>,
    /// Print only the text of the first element of this name (repeatable; one line, in order).
    #[arg(long = "get", value_name = "ELEMENT")]
    get: Vec<String>,
    /// The action, e.g. AssociateTrunkInterface.
    action: String,
    /// Parameters as KEY=VALUE, e.g. VlanId=5 SecurityGroupId.1=sg-db.
    params: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.tool {
        None => simulate(cli.run),
        Some(Tool::TcpListen { port, addr }) => {
            tcp::listen(SocketAddr::new(addr, port)).map_err(|e| e.to_string())
        }
        Some(Tool::TcpConnect { target, timeout_ms }) => {
            tcp::connect(target, Duration::from_millis(timeout_ms)).map_err(|e| e.to_string())
        }
        Some(Tool::Ec2(args)) => ec2(args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each error's message already carries its cause.
            eprintln!("vpc-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(args: RunArgs) -> Result<(), String> {
    let (Some(scenario), Some(run_dir)) = (args.scenario, args.run_dir) else {
        return Err("--scenario and --run-dir are required".into());
    };
    let opts = Options {
        scenario,
        run_dir,
        netns_prefix: args
            .netns_prefix
            .unwrap_or_else(|| format!("vpcsim{}", std::process::id())),
    };
    run(opts).map_err(|e| e.to_string())
}

fn ec2(args: Ec2Args) -> Result<(), client::ClientError> {
    let endpoint = match (args.endpoint, &args.sim_json) {
        (Some(endpoint), _) => endpoint,
        (None, Some(path)) => client::endpoint_from_sim_json(path)?,
        (None, None) => unreachable!("clap requires --endpoint or --sim-json"),
    };
    let params = args
        .params
        .iter()
        .map(|p| client::parse_param(p))
        .collect::<Result<Vec<_>, _>>()?;
    let xml = client::call(&endpoint, &args.action, &params)?;
    if args.get.is_empty() {
        println!("{xml}");
    } else {
        println!("{}", client::pick(&xml, &args.get)?.join(" "));
    }
    Ok(())
}
