//! The `ros` admin CLI: argument parsing and dispatch to the command handlers. Offline commands
//! (`--file`) work on files; the rest will talk to the daemon over the API (a later issue).
//! anyhow is used here, at the binary's edge, and nowhere below.

pub mod config_file;

use clap::{Parser, Subcommand};

/// ros: admin CLI of a container-focused host OS.
#[derive(Debug, Parser)]
#[command(name = "ros", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read, change and validate os-config.toml.
    Config(config_file::ConfigArgs),
    /// The operating system.
    Os {
        #[command(subcommand)]
        command: OsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum OsCommand {
    /// Print the version of ros.
    Version,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the CLI; returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Config(args) => config_file::run(args),
        Command::Os {
            command: OsCommand::Version,
        } => {
            println!("ros {VERSION}");
            Ok(0)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ros: {e:#}");
            1
        }
    }
}
