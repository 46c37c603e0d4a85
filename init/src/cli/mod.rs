//! The `ros` admin CLI: argument parsing and dispatch to the command handlers. `ros config …
//! --file` works offline on a file; everything else talks to the running node over the API
//! (`/run/ros/ros.sock`, or `ROS_SOCKET`). anyhow is used here, at the binary's edge, and
//! nowhere below.

pub mod client;
pub mod config_file;
pub mod node;
pub mod remote;
pub mod table;

use clap::{Parser, Subcommand};

use table::Output;

/// ros: admin CLI of a container-focused host OS.
#[derive(Debug, Parser)]
#[command(name = "ros", version, about)]
pub struct Cli {
    /// Output: `table` for people, `json` for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read, change and validate the config (the running node's, or a file's with --file).
    Config(config_file::ConfigArgs),
    /// The OS services.
    Service {
        #[command(subcommand)]
        command: node::ServiceCommand,
    },
    /// The containers of both namespaces (services and workloads).
    Ps,
    /// The boot log and the logs of every service.
    Logs {
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// Start with the last N lines of each log.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
    },
    /// The operating system.
    Os {
        #[command(subcommand)]
        command: OsCommand,
    },
    /// Reboot the node (an ordered shutdown first).
    Reboot,
    /// Power the node off (an ordered shutdown first).
    Poweroff,
}

#[derive(Debug, Subcommand)]
enum OsCommand {
    /// Print the version of ros (and the node's kernel).
    Version,
    /// Print the node's status.
    Status,
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
    let socket = client::socket_path();
    let output = cli.output;
    let remote = |r: Result<(), client::Failure>| match r {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("ros: {e}");
            Ok(e.exit_code())
        }
    };
    let result = match cli.command {
        Command::Config(args) => config_file::run(args, &socket, output),
        Command::Service { command } => remote(node::service(command, &socket, output)),
        Command::Ps => remote(node::ps(&socket, output)),
        Command::Logs { follow, tail } => remote(node::logs(&socket, follow, tail, output)),
        Command::Os {
            command: OsCommand::Version,
        } => remote(node::version(&socket, output)),
        Command::Os {
            command: OsCommand::Status,
        } => remote(node::status(&socket, output)),
        Command::Reboot => remote(node::power(&socket, false)),
        Command::Poweroff => remote(node::power(&socket, true)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ros: {e:#}");
            1
        }
    }
}
