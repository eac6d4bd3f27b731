//! `vpc-cni`: the CNI plugin binary. Environment and stdin in, one JSON document out.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let outcome = vpc_cni::run(|name| std::env::var(name).ok(), std::io::stdin().lock());
    if let Some(doc) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        // Nothing else can be reported if stdout itself is gone; the exit code still tells.
        let _ = writeln!(out, "{doc}").and_then(|()| out.flush());
    }
    ExitCode::from(outcome.exit_code)
}
