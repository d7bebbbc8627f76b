//! The `keygate` binary: parse the command line, run it, map the outcome to an
//! exit code (0 ok, 1 user error with one line on stderr, 2 usage error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `--json` anywhere: errors too are JSON, on stderr (same exit codes).
    let json = std::env::args_os().any(|a| a == "--json");
    let cli = match keygate::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if json && e.use_stderr() => {
            let message = e.kind().to_string();
            let detail = e.to_string();
            let first = detail
                .lines()
                .next()
                .unwrap_or(&message)
                .trim_start_matches("error: ");
            eprintln!("{}", keygate::cli::CliError::usage(first).json());
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    match keygate::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            eprintln!("{}", e.json());
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            eprintln!("keygate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
