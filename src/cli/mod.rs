//! The `keygate` command line: argument shapes (clap) and dispatch. Each
//! subcommand lives in its own file; all of them return `CliError`, which
//! `main` prints as one line.

mod check;
mod demo;
mod keys;
mod logging;
mod notify;
mod serve;
mod snippet;
mod tokens;

use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "config/keygate.toml";

/// The config file path: `--config`, else `$KEYGATE_CONFIG`, else the default.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("KEYGATE_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Reads and validates a config file: the file's folder is where its
/// relative paths resolve, and errors start with the file's path.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let overrides = env_overrides().map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    Config::from_toml_with(&text, base, &|name| std::env::var(name).ok(), &overrides)
        .map_err(|e| ConfigError(format!("{}:{}", path.display(), e.0)))
}

/// The `KEYGATE_<SECTION>_<OPTION>` variables set in this process.
pub fn env_overrides() -> Result<Vec<crate::config::env::Override>, String> {
    crate::config::env::overrides(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )
}

/// A failed command: a one-line message and its exit code.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
    /// What went wrong, for `--json` errors: `usage`, `not_found`, `error`.
    kind: &'static str,
}

impl CliError {
    /// A user error (exit 1): bad input, missing file, refused change.
    pub fn user(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 1,
            kind: "error",
        }
    }

    /// A user error about something that does not exist (exit 1).
    pub fn not_found(message: impl Into<String>) -> Self {
        CliError {
            kind: "not_found",
            ..CliError::user(message)
        }
    }

    /// A usage error (exit 2): the command line itself is wrong.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 2,
            kind: "usage",
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.code
    }

    /// The error as `--json` prints it on stderr: `{"error": kind,
    /// "message": ...}` on one line.
    pub fn json(&self) -> String {
        serde_json::json!({"error": self.kind, "message": self.to_string()}).to_string()
    }
}

impl fmt::Display for CliError {
    /// One line, whatever the message holds: a newline becomes a space, any
    /// other control character (a stray `\r` or form feed quoted from a
    /// broken file) is escaped, so that it cannot split or garble the line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.message.chars() {
            match c {
                '\n' => f.write_char(' ')?,
                c if c.is_control() => write!(f, "{}", c.escape_debug())?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_line_of_printable_text() {
        let e = CliError::user("keys.toml:3: bad (in `ur\rl\x0c`)\nsecond");
        assert_eq!(e.to_string(), "keys.toml:3: bad (in `ur\\rl\\u{c}`) second");
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::user(e.to_string())
    }
}

/// `keygate --version`: the release, the commit and the compiler it was built with.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KEYGATE_COMMIT"),
    ", ",
    env!("KEYGATE_RUSTC"),
    ")"
);

/// keygate: an authenticating reverse proxy for API keys.
#[derive(Debug, Parser)]
#[command(name = "keygate", version = VERSION, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// Config file [default: $KEYGATE_CONFIG, else config/keygate.toml]
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct JsonConfigArg {
    #[command(flatten)]
    config: ConfigArg,
    /// Print the result as JSON (errors too, on stderr)
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print the result as JSON (errors too, on stderr)
    #[arg(long)]
    json: bool,
    /// Print the configuration in force: the file with the options set by
    /// KEYGATE_<SECTION>_<OPTION> variables over it, passwords redacted
    #[arg(long)]
    print_effective: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate the config and the key store; exit 1 with clear errors.
    Check(CheckArgs),
    /// Create or upgrade the schema of a PostgreSQL key store.
    Migrate(JsonConfigArg),
    /// Manage API keys.
    Keys(keys::KeysArgs),
    /// Manage admin tokens (the admin API and console).
    Tokens(tokens::TokensArgs),
    /// Run the admin API and web console alone (no proxy): one console for
    /// a fleet.
    Admin(ConfigArg),
    /// Try keygate: the gateway on the shipped config, a built-in echo backend
    /// and two throwaway keys, with curl lines to run.
    Demo(ConfigArg),
    /// Print a shell completion script on stdout, e.g.
    /// `keygate completions bash > /etc/bash_completion.d/keygate`.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the manual page (roff) on stdout: `keygate man | man -l -`.
    Man,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(c) => serve::run(&c),
        Command::Demo(c) => demo::run(&c),
        Command::Check(c) => {
            if c.print_effective {
                check::print_effective(&c.config)?;
            }
            check::run(&c.config, c.json)
        }
        Command::Migrate(c) => check::migrate(&c.config, c.json),
        Command::Keys(k) => keys::run(k),
        Command::Tokens(t) => tokens::run(t),
        Command::Admin(c) => serve::run_admin(&c),
        Command::Completions { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "keygate", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}
