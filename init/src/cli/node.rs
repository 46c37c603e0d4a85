//! `ros service …`, `ros ps`, `ros logs`, `ros os version|status`, `ros reboot`, `ros poweroff`:
//! the node commands, through the API.
//!
//! Owns: the clap structs of `ros service`, the requests, and printing: tables for people
//! (`ros ps`: NAMESPACE NAME STATE RESTARTS UPTIME ADDRESS IMAGE), JSON for scripts, log lines as
//! they arrive (`SOURCE | line` when several sources are mixed; one JSON object per line with
//! `-o json`).
//! Must not: print errors (the caller prints `Failure`) or reach the node any other way.

use std::io::Write;
use std::path::Path;

use clap::Subcommand;
use futures::StreamExt;

use super::client::{self, Failure};
use super::table::{self, Output};
use crate::api::proto;

/// `ros service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List the services with their state.
    List,
    /// Start a service.
    Start {
        /// The service.
        name: String,
    },
    /// Stop a service (until it is started again or the node reboots).
    Stop {
        /// The service.
        name: String,
    },
    /// Restart a service.
    Restart {
        /// The service.
        name: String,
    },
    /// Print a service's log.
    Logs {
        /// The service (or workload).
        name: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// Start with the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
    },
}

/// The containers as a table.
pub fn containers_table(rows: &[proto::Container], with_namespace: bool) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            let uptime = if c.uptime_s > 0 || c.state == "running" {
                table::duration(c.uptime_s)
            } else {
                "-".to_string()
            };
            let mut row = Vec::new();
            if with_namespace {
                row.push(c.namespace.clone());
            }
            row.extend([
                c.name.clone(),
                c.state.clone(),
                c.restarts.to_string(),
                uptime,
                if c.address.is_empty() {
                    "-".to_string()
                } else {
                    c.address.clone()
                },
                c.image.clone(),
            ]);
            row
        })
        .collect();
    let mut headers = Vec::new();
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "STATE", "RESTARTS", "UPTIME", "ADDRESS", "IMAGE"]);
    table::render(&headers, &body)
}

fn print_containers(list: &proto::ContainerList, output: Output, with_namespace: bool) {
    match output {
        Output::Table => print!("{}", containers_table(&list.containers, with_namespace)),
        Output::Json => println!("{}", table::json(&list.containers)),
    }
}

/// Prints a log stream until it ends (or forever when following).
async fn print_logs(
    mut stream: tonic::Streaming<proto::LogLine>,
    output: Output,
    labelled: bool,
) -> Result<(), Failure> {
    let mut out = std::io::stdout();
    while let Some(item) = stream.next().await {
        let line = item?;
        let text = match output {
            Output::Json => table::json_line(&line),
            Output::Table if labelled => format!("{} | {}", line.source, line.line),
            Output::Table => line.line,
        };
        // A closed stdout (`ros logs -f | head`) ends the command quietly.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn tail_of(tail: Option<u32>) -> i64 {
    tail.map_or(-1, i64::from)
}

/// `ros service …`.
pub fn service(command: ServiceCommand, socket: &Path, output: Output) -> Result<(), Failure> {
    client::run(socket, |c| async move {
        let mut svc = c.services();
        let reply = match command {
            ServiceCommand::List => {
                let list = svc.list(proto::ListRequest {}).await?.into_inner();
                print_containers(&list, output, false);
                return Ok(());
            }
            ServiceCommand::Logs { name, follow, tail } => {
                let stream = svc
                    .logs(proto::LogsRequest {
                        name,
                        follow,
                        tail: tail_of(tail),
                    })
                    .await?
                    .into_inner();
                return print_logs(stream, output, false).await;
            }
            ServiceCommand::Start { name } => svc.start(proto::ServiceRequest { name }).await?,
            ServiceCommand::Stop { name } => svc.stop(proto::ServiceRequest { name }).await?,
            ServiceCommand::Restart { name } => svc.restart(proto::ServiceRequest { name }).await?,
        };
        let reply = reply.into_inner();
        match output {
            Output::Table => println!("{}", reply.message),
            Output::Json => println!("{}", table::json(&reply)),
        }
        Ok(())
    })
}

/// `ros ps`.
pub fn ps(socket: &Path, output: Output) -> Result<(), Failure> {
    client::run(socket, |c| async move {
        let list = c.system().ps(proto::ListRequest {}).await?.into_inner();
        print_containers(&list, output, true);
        Ok(())
    })
}

/// `ros logs [-f] [--tail N]`: the boot log and every service.
pub fn logs(socket: &Path, follow: bool, tail: Option<u32>, output: Output) -> Result<(), Failure> {
    client::run(socket, |c| async move {
        let stream = c
            .system()
            .logs(proto::LogsRequest {
                name: String::new(),
                follow,
                tail: tail_of(tail),
            })
            .await?
            .into_inner();
        print_logs(stream, output, true).await
    })
}

/// `ros os version`: this binary's version, and the node's kernel when the daemon answers.
pub fn version(socket: &Path, output: Output) -> Result<(), Failure> {
    let node = client::run(socket, |c| async move {
        Ok(c.system().version(proto::Empty {}).await?.into_inner())
    });
    let reply = match node {
        Ok(r) => r,
        // Without a daemon (a build host, a container without the socket): the CLI's own.
        Err(Failure::Unreachable { .. }) => proto::VersionReply {
            version: super::VERSION.to_string(),
            kernel: String::new(),
        },
        Err(e) => return Err(e),
    };
    match output {
        Output::Table => {
            println!("ros {}", reply.version);
            if !reply.kernel.is_empty() {
                println!("kernel {}", reply.kernel);
            }
        }
        Output::Json => println!("{}", table::json(&reply)),
    }
    Ok(())
}

/// `ros os status`.
pub fn status(socket: &Path, output: Output) -> Result<(), Failure> {
    client::run(socket, |c| async move {
        let r = c.system().status(proto::Empty {}).await?.into_inner();
        match output {
            Output::Table => {
                let width = r.fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
                for f in &r.fields {
                    println!("{:width$}  {}", f.name, f.value);
                }
            }
            Output::Json => {
                let map: serde_json::Map<String, serde_json::Value> = r
                    .fields
                    .iter()
                    .map(|f| (f.name.clone(), serde_json::Value::String(f.value.clone())))
                    .collect();
                println!("{}", table::json(&map));
            }
        }
        Ok(())
    })
}

/// `ros reboot` / `ros poweroff`.
pub fn power(socket: &Path, poweroff: bool) -> Result<(), Failure> {
    client::run(socket, |c| async move {
        let mut sys = c.system();
        if poweroff {
            sys.poweroff(proto::Empty {}).await?;
            println!("powering off");
        } else {
            sys.reboot(proto::Empty {}).await?;
            println!("rebooting");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_table_has_both_namespaces_and_dashes_for_unknowns() {
        let rows = vec![
            proto::Container {
                namespace: "system".into(),
                name: "syslog".into(),
                state: "running".into(),
                restarts: 0,
                uptime_s: 65,
                address: "host".into(),
                image: "docker.io/ros/syslog:0.1.0".into(),
                pid: 10,
            },
            proto::Container {
                namespace: "user".into(),
                name: "web".into(),
                state: "exited".into(),
                restarts: 3,
                uptime_s: 0,
                address: String::new(),
                image: "nginx".into(),
                pid: 0,
            },
        ];
        assert_eq!(
            containers_table(&rows, true),
            "NAMESPACE  NAME    STATE    RESTARTS  UPTIME  ADDRESS  IMAGE\n\
             system     syslog  running  0         1m5s    host     docker.io/ros/syslog:0.1.0\n\
             user       web     exited   3         -       -        nginx\n"
        );
    }
}
