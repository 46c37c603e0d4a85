//! What a config change changes: old effective `Config` vs new effective `Config` → a typed
//! `Plan`, and its human rendering (`~ hostname: a -> b`, `+ workload web`, `- workload old`).
//!
//! Owns: the comparison rules. A container (service or workload) counts only while enabled:
//! turning one off removes it, turning it on adds it; an enabled container whose settings differ
//! in any key is `changed` (the reconciler recreates it) — nothing else is touched. Interfaces and
//! registries compare the same way by name. Removed kernel modules stay loaded (noted), storage
//! changes take effect at the next boot (noted).
//! Must not: act, read the node, or know how reconcilers work; it is a pure function, so
//! `--dry-run`, `validate` and the live change print the same plan.

use std::collections::BTreeMap;
use std::fmt;

use super::schema::{Config, Container, UserLimits};
use super::units::UserMemory;

/// An old → new change of one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<T> {
    /// Before.
    pub from: T,
    /// After.
    pub to: T,
}

/// Named entries (services, workloads, interfaces, registries) that appear, go or differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    /// New names.
    pub added: Vec<String>,
    /// Names gone (or, for containers, disabled).
    pub removed: Vec<String>,
    /// Names present on both sides whose settings differ in any key.
    pub changed: Vec<String>,
}

impl Named {
    /// True when nothing was added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Every name the change touches.
    pub fn touched(&self) -> impl Iterator<Item = &String> {
        self.added
            .iter()
            .chain(self.removed.iter())
            .chain(self.changed.iter())
    }

    fn of<T: PartialEq>(old: &BTreeMap<String, &T>, new: &BTreeMap<String, &T>) -> Named {
        let mut named = Named::default();
        for (name, value) in new {
            match old.get(name) {
                None => named.added.push(name.clone()),
                Some(before) if before != value => named.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        named.removed = old
            .keys()
            .filter(|name| !new.contains_key(*name))
            .cloned()
            .collect();
        named
    }
}

/// Everything one change touches, by what reconciles it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// `hostname`.
    pub hostname: Option<Change<String>>,
    /// sysctl keys set (new or different value): key → (old value, new value).
    pub sysctl_set: BTreeMap<String, (Option<String>, String)>,
    /// sysctl keys no longer configured (the shipped default, if any, applies again).
    pub sysctl_removed: Vec<String>,
    /// Kernel modules to load.
    pub modules_added: Vec<String>,
    /// Kernel modules no longer listed (not unloaded).
    pub modules_removed: Vec<String>,
    /// `network.interfaces.*`.
    pub interfaces: Named,
    /// `network.nameservers` or `network.search` (resolv.conf).
    pub dns: bool,
    /// `network.wait` or `network.wait_timeout_s` (used at boot only).
    pub network_wait: bool,
    /// `services.*` (enabled ones).
    pub services: Named,
    /// `workloads.*` (enabled ones).
    pub workloads: Named,
    /// `limits.user` (the fence).
    pub limits_user: Option<Change<UserLimits>>,
    /// `registries.*`.
    pub registries: Named,
    /// `storage` (takes effect at the next boot).
    pub storage: bool,
}

fn enabled(map: &BTreeMap<String, Container>) -> BTreeMap<String, &Container> {
    map.iter()
        .filter(|(_, c)| c.enabled)
        .map(|(n, c)| (n.clone(), c))
        .collect()
}

fn by_ref<T>(map: &BTreeMap<String, T>) -> BTreeMap<String, &T> {
    map.iter().map(|(n, v)| (n.clone(), v)).collect()
}

impl Plan {
    /// The plan that takes a node from `old` to `new`.
    pub fn between(old: &Config, new: &Config) -> Plan {
        let hostname = (old.hostname != new.hostname).then(|| Change {
            from: old.hostname.clone(),
            to: new.hostname.clone(),
        });
        let sysctl_set = new
            .sysctl
            .iter()
            .filter(|(k, v)| old.sysctl.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), (old.sysctl.get(k).cloned(), v.clone())))
            .collect();
        let sysctl_removed = old
            .sysctl
            .keys()
            .filter(|k| !new.sysctl.contains_key(*k))
            .cloned()
            .collect();
        let not_in = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|m| !b.contains(m)).cloned().collect()
        };
        let (on, nn) = (&old.network, &new.network);
        Plan {
            hostname,
            sysctl_set,
            sysctl_removed,
            modules_added: not_in(&new.kernel.modules, &old.kernel.modules),
            modules_removed: not_in(&old.kernel.modules, &new.kernel.modules),
            interfaces: Named::of(&by_ref(&on.interfaces), &by_ref(&nn.interfaces)),
            dns: on.nameservers != nn.nameservers || on.search != nn.search,
            network_wait: on.wait != nn.wait || on.wait_timeout_s != nn.wait_timeout_s,
            services: Named::of(&enabled(&old.services), &enabled(&new.services)),
            workloads: Named::of(&enabled(&old.workloads), &enabled(&new.workloads)),
            limits_user: (old.limits.user != new.limits.user).then(|| Change {
                from: old.limits.user.clone(),
                to: new.limits.user.clone(),
            }),
            registries: Named::of(&by_ref(&old.registries), &by_ref(&new.registries)),
            storage: old.storage != new.storage,
        }
    }

    /// True when the effective config does not change.
    pub fn is_empty(&self) -> bool {
        self.lines().is_empty()
    }

    /// One human line per item; empty when nothing changes.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = &self.hostname {
            out.push(format!("~ hostname: {} -> {}", c.from, c.to));
        }
        for (key, (from, to)) in &self.sysctl_set {
            out.push(match from {
                Some(from) => format!("~ sysctl {key}: {from} -> {to}"),
                None => format!("+ sysctl {key} = {to}"),
            });
        }
        for key in &self.sysctl_removed {
            out.push(format!("- sysctl {key}"));
        }
        for m in &self.modules_added {
            out.push(format!("+ module {m}"));
        }
        for m in &self.modules_removed {
            out.push(format!("- module {m} (stays loaded until reboot)"));
        }
        named_lines(&mut out, "interface", &self.interfaces, "reconfigure");
        if self.dns {
            out.push("~ network: nameservers/search (resolv.conf)".to_string());
        }
        if self.network_wait {
            out.push("~ network: wait (used at the next boot)".to_string());
        }
        named_lines(&mut out, "service", &self.services, "recreate");
        named_lines(&mut out, "workload", &self.workloads, "recreate");
        if let Some(c) = &self.limits_user {
            out.push(format!(
                "~ limits.user: max_containers {} -> {}, memory {} -> {}, pids {} -> {}",
                c.from.max_containers,
                c.to.max_containers,
                memory(c.from.memory),
                memory(c.to.memory),
                c.from.pids,
                c.to.pids
            ));
        }
        named_lines(&mut out, "registry", &self.registries, "changed");
        if self.storage {
            out.push("~ storage (takes effect at the next boot)".to_string());
        }
        out
    }
}

fn memory(m: UserMemory) -> String {
    match m {
        UserMemory::Bytes(b) => b.to_string(),
        UserMemory::Percent(p) => format!("{p}%"),
    }
}

fn named_lines(out: &mut Vec<String>, what: &str, named: &Named, verb: &str) {
    for n in &named.added {
        out.push(format!("+ {what} {n}"));
    }
    for n in &named.removed {
        out.push(format!("- {what} {n}"));
    }
    for n in &named.changed {
        out.push(format!("~ {what} {n} ({verb})"));
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.lines();
        if lines.is_empty() {
            return f.write_str("no change");
        }
        f.write_str(&lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{effective, Layer};

    fn config(text: &str) -> Config {
        effective(&[Layer::parse("local", text).unwrap()]).unwrap()
    }

    #[test]
    fn the_same_config_plans_nothing() {
        let c = config(include_str!("../../tests/golden/01_design_example.toml"));
        let p = Plan::between(&c, &c);
        assert!(p.is_empty());
        assert_eq!(p.to_string(), "no change");
    }

    #[test]
    fn golden_plan() {
        let old = config(include_str!("../../tests/golden/03_plan.old.toml"));
        let new = config(include_str!("../../tests/golden/03_plan.new.toml"));
        let p = Plan::between(&old, &new);
        assert_eq!(
            format!("{p}\n"),
            include_str!("../../tests/golden/03_plan.out")
        );
        assert_eq!(p.workloads.added, ["api"]);
        assert_eq!(p.workloads.removed, ["old", "paused"]);
        assert_eq!(p.workloads.changed, ["web"]);
        assert!(p.services.is_empty());
        assert_eq!(p.modules_added, ["br_netfilter"]);
    }

    #[test]
    fn one_workload_added_touches_nothing_else() {
        let old = config("version = 1\n[workloads.a]\nimage = \"a\"\n");
        let new =
            config("version = 1\n[workloads.a]\nimage = \"a\"\n[workloads.b]\nimage = \"b\"\n");
        let p = Plan::between(&old, &new);
        assert_eq!(p.lines(), ["+ workload b"]);
        assert_eq!(p.workloads.touched().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn enabling_and_disabling_are_add_and_remove() {
        let on = config("version = 1\n[services.ntp]\nimage = \"ros/ntp\"\n");
        let off = config("version = 1\n[services.ntp]\nimage = \"ros/ntp\"\nenabled = false\n");
        assert_eq!(Plan::between(&on, &off).lines(), ["- service ntp"]);
        assert_eq!(Plan::between(&off, &on).lines(), ["+ service ntp"]);
    }

    #[test]
    fn any_key_of_a_container_is_a_change() {
        let a = config("version = 1\n[workloads.w]\nimage = \"w\"\n");
        let b = config("version = 1\n[workloads.w]\nimage = \"w\"\nenv = { A = \"1\" }\n");
        assert_eq!(Plan::between(&a, &b).lines(), ["~ workload w (recreate)"]);
    }
}
