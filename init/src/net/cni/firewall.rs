//! ros's own host firewall for the workload bridge (what the CNI plugins do not do):
//!
//! - `ROS-WORKLOADS-INPUT` (filter, jumped to from `INPUT -i ros0`): workloads reach the host
//!   itself only on `[network.workloads] host_ports`, on DNS when the host serves it (a
//!   workload resolver is the bridge address), and with replies to connections the host
//!   opened; everything else from `ros0` to the host is dropped. Published ports are not
//!   affected: portmap DNATs them in PREROUTING, so they are forwarded, not input.
//! - `ROS-ADMIN` (filter): the firewall plugin's admin chain, which its `CNI-FORWARD` jumps to
//!   before its per-workload accepts. With `isolate = true` it drops `ros0 → ros0` traffic:
//!   routed (hairpin through a published port) and, with `br_netfilter` loaded (the host
//!   default once the module is in: `net.bridge.bridge-nf-call-iptables = 1`), bridged.
//!
//! Owns: the rules as `iptables-restore` text ([`rules`]) and applying them ([`apply`]): one
//! `iptables-restore --noflush` that declares (so flushes) and refills both chains atomically,
//! then the `INPUT` jump, inserted first unless present.
//! Must not: touch chains it does not own (the plugins' `CNI-*`), or the filter policies.
//!
//! Limitations: IPv4 only (the workload subnet is IPv4).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::conflist::{WorkloadNet, ADMIN_CHAIN, BRIDGE};
use super::runner::{Invocation, PluginRunner, RunError};
use crate::config::ports::Protocol;
use crate::supervisor::reaper::Exit;

/// ros's input chain for traffic from the bridge.
pub const INPUT_CHAIN: &str = "ROS-WORKLOADS-INPUT";

/// How long one iptables command may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A firewall command that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirewallError {
    /// It could not run.
    #[error("workload firewall: {0}")]
    Run(#[from] RunError),
    /// It ran and failed.
    #[error("workload firewall: `{command}` failed ({exit}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        exit: Exit,
        /// What it said.
        stderr: String,
    },
}

/// The `iptables-restore --noflush` input for `net`.
pub fn rules(net: &WorkloadNet) -> String {
    let mut out = String::from("*filter\n");
    let _ = writeln!(out, ":{INPUT_CHAIN} - [0:0]");
    let _ = writeln!(out, ":{ADMIN_CHAIN} - [0:0]");
    let input = |out: &mut String, rule: &str| {
        let _ = writeln!(out, "-A {INPUT_CHAIN} {rule}");
    };
    input(
        &mut out,
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    );
    let mut allowed = Vec::new();
    if net.host_serves_dns() {
        allowed.push((53, Protocol::Udp, "DNS"));
        allowed.push((53, Protocol::Tcp, "DNS"));
    }
    for p in &net.host_ports {
        allowed.push((p.port, p.protocol, "host_ports"));
    }
    for (port, proto, why) in allowed {
        input(
            &mut out,
            &format!(
                "-p {proto} -m {proto} --dport {port} -m comment --comment \"ros: {why}\" -j ACCEPT"
            ),
        );
    }
    input(
        &mut out,
        "-m comment --comment \"ros: workloads do not reach the host\" -j DROP",
    );
    if net.isolate {
        let _ = writeln!(
            out,
            "-A {ADMIN_CHAIN} -i {BRIDGE} -o {BRIDGE} -m comment --comment \"ros: network.workloads.isolate\" -j DROP"
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// The binaries the firewall runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools<'a> {
    /// `iptables` (nf_tables backend).
    pub iptables: &'a Path,
    /// `iptables-restore`.
    pub iptables_restore: &'a Path,
    /// `PATH` for them.
    pub path_env: &'a str,
}

fn run(
    runner: &dyn PluginRunner,
    tools: &Tools<'_>,
    program: &Path,
    args: &[&str],
    stdin: &str,
) -> Result<Exit, FirewallError> {
    let inv = Invocation {
        program: program.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("PATH".into(), tools.path_env.to_string())],
        stdin: stdin.as_bytes().to_vec(),
        timeout: TIMEOUT,
    };
    let done = runner.run(&inv)?;
    if done.success() {
        return Ok(done.exit);
    }
    Err(FirewallError::Failed {
        command: format!("{} {}", program.display(), args.join(" ")),
        exit: done.exit,
        stderr: done.stderr_text(),
    })
}

/// Writes both chains and makes sure `INPUT` jumps to ros's input chain for the bridge.
pub fn apply(
    runner: &dyn PluginRunner,
    tools: &Tools<'_>,
    net: &WorkloadNet,
) -> Result<(), FirewallError> {
    run(
        runner,
        tools,
        tools.iptables_restore,
        &["-w", "--noflush"],
        &rules(net),
    )?;
    let jump = ["INPUT", "-i", BRIDGE, "-j", INPUT_CHAIN];
    let mut check = vec!["-w", "-C"];
    check.extend_from_slice(&jump);
    match run(runner, tools, tools.iptables, &check, "") {
        Ok(_) => Ok(()),
        // -C exits 1 when the rule is missing.
        Err(FirewallError::Failed {
            exit: Exit::Code(1),
            ..
        }) => {
            let mut insert = vec!["-w", "-I", "INPUT", "1"];
            insert.extend_from_slice(&jump[1..]);
            run(runner, tools, tools.iptables, &insert, "").map(|_| ())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::WorkloadNetwork;

    #[test]
    fn rules_match_golden() {
        let config = WorkloadNetwork {
            subnet: "10.88.0.0/16".into(),
            isolate: true,
            host_ports: vec!["9100".into(), "5353/udp".into()],
        };
        let ns = ["10.88.0.1"
            .parse()
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))];
        let net = WorkloadNet::new(&config, &ns, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rules(&net),
            include_str!("golden/04_firewall_isolated.rules")
        );
        let net = WorkloadNet::new(&WorkloadNetwork::default(), &[], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rules(&net),
            include_str!("golden/05_firewall_default.rules")
        );
    }
}
