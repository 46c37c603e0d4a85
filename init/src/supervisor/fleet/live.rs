//! The fleet's live side, for the admin API: rows for `ros ps` and `ros service list`,
//! `ros service start|stop|restart`, and reconciling the containers a config change touches.
//!
//! Owns only what a change does to the running fleet: stop what a plan removes or changes, then
//! start what it adds or changes (services in their dependency waves, workloads through
//! admission), nothing else — a container the plan does not name is never restarted.
//! Must not: block the caller (everything that waits runs on the fleet's runtime and answers
//! through a reply channel), decide what changed (config::plan does) or touch the network.

use super::*;
use crate::api::bridge::Reply;
use crate::api::node::{NodeError, ServiceAction};
use crate::api::proto;
use crate::cgroups;
use crate::config::Plan;

/// How long a live start waits for a container to run (or a one-shot to finish).
const LIVE_START: Duration = Duration::from_secs(90);

fn state_name(s: &State) -> &'static str {
    match s {
        State::Starting => "starting",
        State::Running { .. } => "running",
        State::Done { ok: true } => "exited",
        State::Done { ok: false } | State::Failed => "failed",
    }
}

/// Seconds `pid` has run, from its start time in `/proc/PID/stat` (clock ticks since boot).
fn uptime_of(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Field 22, counted after the command name, which may contain spaces.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let ticks: u64 = after
        .split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100);
    (kmsg::uptime() as u64).saturating_sub(ticks / hz)
}

/// What `ros ps` shows as a container's address.
fn address(job: &Job) -> String {
    match job.container.net_mode(job.kind) {
        NetMode::Host => "host".to_string(),
        NetMode::None => "none".to_string(),
        NetMode::Bridge => crate::supervisor::bridge_net::address_of(&job.name)
            .map(|a| a.to_string())
            .unwrap_or_default(),
    }
}

fn row(job: &Job, state: &str, pid: u32, restarts: u32) -> proto::Container {
    proto::Container {
        namespace: job.namespace.to_string(),
        name: job.name.clone(),
        state: state.to_string(),
        restarts,
        uptime_s: if pid > 0 { uptime_of(pid) } else { 0 },
        address: address(job),
        image: job.image.clone(),
        pid,
    }
}

fn unit_row(u: &Unit) -> proto::Container {
    let state = u.state_rx.borrow().clone();
    let pid = match state {
        State::Running { pid } => pid,
        _ => 0,
    };
    let restarts = u.restarts.lock().map(|r| *r).unwrap_or(0);
    row(&u.job, state_name(&state), pid, restarts)
}

/// Takes the units named in `names` out of `list`.
fn take(list: &Mutex<Vec<Unit>>, names: &BTreeSet<&String>) -> Vec<Unit> {
    let Ok(mut list) = list.lock() else {
        return Vec::new();
    };
    let (out, keep): (Vec<Unit>, Vec<Unit>) = std::mem::take(&mut *list)
        .into_iter()
        .partition(|u| names.contains(&u.name));
    *list = keep;
    out
}

fn push(list: &Mutex<Vec<Unit>>, unit: Unit) {
    if let Ok(mut l) = list.lock() {
        l.push(unit);
    }
}

/// Starts `job` and waits (bounded) until it runs; the line says how it went.
async fn start_live(handle: &tokio::runtime::Handle, list: &Mutex<Vec<Unit>>, job: Job) -> String {
    let what = format!("{} {}", kind_name(job.kind), job.name);
    let oneshot = job.container.oneshot;
    let unit = spawn_unit(handle, job);
    let rx = unit.state_rx.clone();
    push(list, unit);
    let outcome = wait_settled(rx, oneshot, LIVE_START).await;
    match outcome {
        Some(State::Running { pid }) => format!("{what} started (pid {pid})"),
        Some(State::Done { ok: true }) => format!("{what} ran to completion"),
        Some(_) => format!("{what} failed to start (see `ros logs`)"),
        None => format!("{what} still starting after {}s", LIVE_START.as_secs()),
    }
}

/// Names in `named.removed` and `named.changed`: what must stop first.
fn going(named: &crate::config::plan::Named) -> BTreeSet<&String> {
    named.removed.iter().chain(named.changed.iter()).collect()
}

impl Fleet {
    /// Every container ros runs (services, including those stopped through the API, then
    /// workloads), for `ros ps`; only the services for `ros service list`.
    pub fn rows(&self, services_only: bool) -> Vec<proto::Container> {
        let mut out: Vec<proto::Container> = self
            .services
            .lock()
            .map(|s| s.iter().map(unit_row).collect())
            .unwrap_or_default();
        if let Ok(stopped) = self.stopped.lock() {
            out.extend(stopped.values().map(|j| row(j, "stopped", 0, 0)));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        if !services_only {
            if let Ok(w) = self.workloads.lock() {
                let mut rows: Vec<proto::Container> = w.iter().map(unit_row).collect();
                rows.sort_by(|a, b| a.name.cmp(&b.name));
                out.extend(rows);
            }
        }
        out
    }

    /// `ros service start|stop|restart NAME`, answered through `reply` once done.
    pub fn service_action(&self, name: String, action: ServiceAction, reply: Reply<String>) {
        let services = self.services.clone();
        let stopped = self.stopped.clone();
        let handle = self.rt.handle().clone();
        self.rt.spawn(async move {
            let running = services
                .lock()
                .map(|s| s.iter().any(|u| u.name == name))
                .unwrap_or(false);
            let parked = stopped
                .lock()
                .map(|s| s.contains_key(&name))
                .unwrap_or(false);
            if !running && !parked {
                let _ = reply.send(Err(NodeError::NotFound {
                    kind: "service",
                    name,
                }));
                return;
            }
            let mut lines = Vec::new();
            if running && action != ServiceAction::Start {
                let units = take(&services, &BTreeSet::from([&name]));
                let job = units.first().map(|u| u.job.clone());
                stop_units(units).await;
                lines.push(format!("service {name} stopped"));
                if let (Some(job), Ok(mut s)) = (job, stopped.lock()) {
                    s.insert(name.clone(), job);
                }
            }
            if action != ServiceAction::Stop {
                let job = stopped.lock().ok().and_then(|mut s| s.remove(&name));
                match job {
                    Some(job) => lines.push(start_live(&handle, &services, job).await),
                    None => lines.push(format!("service {name} is already running")),
                }
            }
            let _ = reply.send(Ok(lines.join("; ")));
        });
    }

    /// Applies the containers' part of `plan` (services, workloads, the fence's limits) to
    /// reach `new`; answers with one line per thing done.
    pub fn reconcile(&self, new: Config, plan: Plan, reply: Reply<Vec<String>>) {
        let services = self.services.clone();
        let stopped = self.stopped.clone();
        let workloads = self.workloads.clone();
        let handle = self.rt.handle().clone();
        let bridge = self.bridge.clone();
        self.rt.spawn(async move {
            let lives = Lives {
                handle: &handle,
                services: &services,
                stopped: &stopped,
                workloads: &workloads,
                bridge: bridge.as_ref(),
            };
            let lines = reconcile(&lives, &new, &plan).await;
            let _ = reply.send(Ok(lines));
        });
    }
}

/// The fleet's shared parts a live change works on.
struct Lives<'a> {
    handle: &'a tokio::runtime::Handle,
    services: &'a Mutex<Vec<Unit>>,
    stopped: &'a Mutex<BTreeMap<String, Job>>,
    workloads: &'a Mutex<Vec<Unit>>,
    bridge: Option<&'a BridgeNet>,
}

async fn reconcile(lives: &Lives<'_>, new: &Config, plan: &Plan) -> Vec<String> {
    let Lives {
        handle,
        services,
        stopped,
        workloads,
        bridge,
    } = *lives;
    let mut lines = Vec::new();
    // Stop first: workloads, then services (DESIGN.md's shutdown order, for the part changed).
    for (list, named, kind) in [
        (workloads, &plan.workloads, "workload"),
        (services, &plan.services, "service"),
    ] {
        let names = going(named);
        if names.is_empty() {
            continue;
        }
        stop_units(take(list, &names)).await;
        if let Ok(mut s) = stopped.lock() {
            s.retain(|n, _| !names.contains(n));
        }
        for n in &named.removed {
            lines.push(format!("{kind} {n} stopped and removed"));
        }
    }
    if plan.limits_user.is_some() {
        match cgroups::apply_limits(
            Path::new(cgroups::ROOT),
            &new.limits.user,
            Path::new("/proc/meminfo"),
        ) {
            Ok(()) => lines.push("limits.user applied to /ros/user".to_string()),
            Err(e) => lines.push(format!("limits.user: {e}")),
        }
    }
    // Then start, services in their waves (a dependency first).
    let starting: BTreeSet<&String> = plan
        .services
        .added
        .iter()
        .chain(plan.services.changed.iter())
        .collect();
    if !starting.is_empty() {
        let system = Instance::system();
        let deps: BTreeMap<String, Vec<String>> = new
            .services
            .iter()
            .filter(|(_, c)| c.enabled)
            .map(|(n, c)| (n.clone(), c.depends_on.clone()))
            .collect();
        let order: Vec<String> = graph::start_waves(&deps)
            .map(|w| w.into_iter().flatten().collect())
            .unwrap_or_else(|_| starting.iter().map(|n| (*n).clone()).collect());
        for name in order.iter().filter(|n| starting.contains(n)) {
            if let Some(c) = new.services.get(name) {
                let job = service_job(&system, name, c);
                lines.push(start_live(handle, services, job).await);
            }
        }
    }
    let starting: Vec<&String> = plan
        .workloads
        .added
        .iter()
        .chain(plan.workloads.changed.iter())
        .collect();
    if !starting.is_empty() {
        lines.extend(start_workloads_live(handle, workloads, new, &starting, bridge).await);
    }
    lines
}

async fn start_workloads_live(
    handle: &tokio::runtime::Handle,
    workloads: &Mutex<Vec<Unit>>,
    new: &Config,
    names: &[&String],
    bridge: Option<&BridgeNet>,
) -> Vec<String> {
    let user = Instance::user();
    let client = match Client::connect(&user.socket, user.namespace()).await {
        Ok(c) => c,
        Err(e) => return vec![format!("workloads not started: {e}")],
    };
    let registries = Arc::new(new.registries.clone());
    let max = new.limits.user.max_containers as usize;
    let mut imported = BTreeSet::new();
    let mut lines = Vec::new();
    for name in names {
        let Some(c) = new.workloads.get(*name) else {
            continue;
        };
        let count = workloads.lock().map(|w| w.len()).unwrap_or(0);
        if count >= max {
            let line =
                format!("workload {name}: not created: limits.user.max_containers = {max} reached");
            kmsg::console(&line);
            lines.push(line);
            continue;
        }
        let job = workload_job(&user, &client, name, c, &registries, &mut imported, bridge).await;
        lines.push(start_live(handle, workloads, job).await);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_of_self_is_small_and_of_a_missing_pid_zero() {
        assert!(uptime_of(std::process::id()) < 100_000);
        assert_eq!(uptime_of(u32::MAX), 0);
    }

    #[test]
    fn states_read_as_people_expect() {
        assert_eq!(state_name(&State::Running { pid: 1 }), "running");
        assert_eq!(state_name(&State::Done { ok: true }), "exited");
        assert_eq!(state_name(&State::Done { ok: false }), "failed");
        assert_eq!(state_name(&State::Starting), "starting");
    }
}
