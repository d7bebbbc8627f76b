//! The `keygate` command line: argument shapes (clap) and dispatch. Each
//! subcommand lives in its own file; all of them return `CliError`, which
//! `main` prints as one line.

mod check;
mod demo;
mod keys;
mod logging;
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
    Config::from_toml(&text, base, &|name| std::env::var(name).ok())
        .map_err(|e| ConfigError(format!("{}:{}", path.display(), e.0)))
}

/// A failed command: a one-line message and its exit code.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    /// A user error (exit 1): bad input, missing file, refused change.
    pub fn user(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 1,
        }
    }

    /// A usage error (exit 2): the command line itself is wrong.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 2,
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.code
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate the config and the key store; exit 1 with clear errors.
    Check(ConfigArg),
    /// Create or upgrade the schema of a PostgreSQL key store.
    Migrate(ConfigArg),
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
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(c) => serve::run(&c),
        Command::Demo(c) => demo::run(&c),
        Command::Check(c) => check::run(&c),
        Command::Migrate(c) => check::migrate(&c),
        Command::Keys(k) => keys::run(k),
        Command::Tokens(t) => tokens::run(t),
        Command::Admin(c) => serve::run_admin(&c),
    }
}
