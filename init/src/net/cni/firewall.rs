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
    /// `iptables-save`.
    pub iptables_save: &'a Path,
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
    run_output(runner, tools, program, args, stdin).map(|(exit, _)| exit)
}

fn run_output(
    runner: &dyn PluginRunner,
    tools: &Tools<'_>,
    program: &Path,
    args: &[&str],
    stdin: &str,
) -> Result<(Exit, String), FirewallError> {
    let inv = Invocation {
        program: program.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("PATH".into(), tools.path_env.to_string())],
        stdin: stdin.as_bytes().to_vec(),
        timeout: TIMEOUT,
    };
    let done = runner.run(&inv)?;
    if done.success() {
        return Ok((
            done.exit,
            String::from_utf8_lossy(&done.stdout).into_owned(),
        ));
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

/// The nat table as `iptables-save -t nat` prints it.
pub fn save_nat(runner: &dyn PluginRunner, tools: &Tools<'_>) -> Result<String, FirewallError> {
    run_output(runner, tools, tools.iptables_save, &["-t", "nat"], "").map(|(_, out)| out)
}

/// The comment the bridge plugin puts on a workload's masquerade rules, as iptables-save
/// quotes it.
fn masq_comment(workload: &str) -> String {
    format!("--comment \"name: \\\"{BRIDGE}\\\" id: \\\"{workload}\\\"\"")
}

/// The `iptables-restore --noflush` text that removes a workload's masquerade rules from a
/// nat table dump (`save`): its `POSTROUTING` jumps and the `CNI-…` chains they jump to. The
/// bridge plugin (1.1.1) removes them only when the workload's namespace still exists, so a
/// DEL after a crash leaves them; `None` when there is nothing left.
pub fn masquerade_leftovers(save: &str, workload: &str) -> Option<String> {
    let comment = masq_comment(workload);
    let mut deletes = Vec::new();
    let mut chains = Vec::new();
    for line in save.lines() {
        let Some(rule) = line.strip_prefix("-A POSTROUTING ") else {
            continue;
        };
        if !rule.contains(&comment) {
            continue;
        }
        let Some(chain) = rule.rsplit_once(" -j ").map(|(_, c)| c.trim()) else {
            continue;
        };
        if chain.starts_with("CNI-") && !chain.contains(' ') {
            deletes.push(format!("-D POSTROUTING {rule}"));
            chains.push(chain.to_string());
        }
    }
    if deletes.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for d in deletes {
        let _ = writeln!(out, "{d}");
    }
    for c in chains {
        let _ = writeln!(out, "-F {c}");
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Removes what [`masquerade_leftovers`] finds; returns whether there was anything.
pub fn remove_masquerade_leftovers(
    runner: &dyn PluginRunner,
    tools: &Tools<'_>,
    workload: &str,
) -> Result<bool, FirewallError> {
    let save = save_nat(runner, tools)?;
    let Some(text) = masquerade_leftovers(&save, workload) else {
        return Ok(false);
    };
    run(
        runner,
        tools,
        tools.iptables_restore,
        &["-w", "--noflush"],
        &text,
    )?;
    Ok(true)
}

/// Checks in a nat table dump that portmap's DNAT rules for `workload` publish every mapping
/// to `address` — ros's own CHECK of published ports, used where portmap 1.1.1's CHECK fails
/// on an IPv4-only workload (it also checks the IPv6 chain it never created). `Err` says what
/// is missing.
pub fn check_published(
    save: &str,
    workload: &str,
    address: std::net::Ipv4Addr,
    ports: &[crate::config::ports::PortMapping],
) -> Result<(), String> {
    if ports.is_empty() {
        return Ok(());
    }
    let comment = format!("--comment \"dnat name: \\\"{BRIDGE}\\\" id: \\\"{workload}\\\"\"");
    let chains: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A CNI-HOSTPORT-DNAT ") && l.contains(&comment))
        .filter_map(|l| l.rsplit_once(" -j ").map(|(_, c)| c.trim()))
        .collect();
    if chains.is_empty() {
        return Err(format!("no CNI-HOSTPORT-DNAT jump for workload {workload}"));
    }
    for p in ports {
        let want = format!(
            "-p {proto} -m {proto} --dport {host} -j DNAT --to-destination {address}:{container}",
            proto = p.protocol,
            host = p.host,
            container = p.container,
        );
        let found = save.lines().any(|l| {
            chains
                .iter()
                .any(|c| l.starts_with(&format!("-A {c} ")) && l.ends_with(&want))
        });
        if !found {
            return Err(format!("no DNAT rule for {p} to {address}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::WorkloadNetwork;

    const NAT: &str = include_str!("golden/06_nat.save");

    #[test]
    fn masquerade_leftovers_of_one_workload_are_found() {
        assert_eq!(
            masquerade_leftovers(NAT, "a").as_deref(),
            Some(include_str!("golden/07_masquerade_leftovers_a.rules"))
        );
        assert_eq!(masquerade_leftovers(NAT, "zz"), None);
        // A prefix of another id is not that id.
        assert_eq!(masquerade_leftovers(NAT, "b2"), None);
    }

    #[test]
    fn published_ports_are_checked_in_the_nat_table() {
        use crate::config::ports::{PortMapping, Protocol};
        let ip = std::net::Ipv4Addr::new(10, 88, 0, 2);
        let m = |host, container, protocol| PortMapping {
            host,
            container,
            protocol,
        };
        assert_eq!(
            check_published(NAT, "a", ip, &[m(8080, 80, Protocol::Tcp)]),
            Ok(())
        );
        assert!(check_published(NAT, "a", ip, &[m(8081, 80, Protocol::Tcp)]).is_err());
        assert!(check_published(NAT, "a", ip, &[m(8080, 80, Protocol::Udp)]).is_err());
        let other = std::net::Ipv4Addr::new(10, 88, 0, 9);
        assert!(check_published(NAT, "a", other, &[m(8080, 80, Protocol::Tcp)]).is_err());
        assert!(check_published(NAT, "b", ip, &[m(8080, 80, Protocol::Tcp)])
            .is_err_and(|e| e.contains("no CNI-HOSTPORT-DNAT jump")));
        assert_eq!(check_published(NAT, "b", ip, &[]), Ok(()));
    }

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
