//! The `keygate` binary: parse the command line, run it, map the outcome to an
//! exit code (0 ok, 1 user error with one line on stderr, 2 usage error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = keygate::cli::Cli::parse();
    match keygate::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
