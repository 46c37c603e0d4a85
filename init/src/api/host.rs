//! The node-side reconcilers that need neither the container fleet nor the network: hostname,
//! sysctl and kernel modules, applied from a `Plan`. PID 1's `Node::reconcile` calls
//! [`reconcile_kernel_live`] and adds the network, services and workloads.
//!
//! Owns: what each plan item means for the kernel — a new hostname is set; a sysctl key set is
//! written; a sysctl key no longer configured gets the shipped default back (ros's
//! `sysctl/defaults`) or, without one, keeps the kernel's current value; an added module is
//! loaded with its dependencies; a removed one stays loaded. Every item is tried; the failures
//! are reported together, naming each item.
//! Must not: touch anything the plan does not name (only what a change touches is changed).

use std::collections::BTreeMap;
use std::path::Path;

use super::node::NodeError;
use crate::boot::modules;
use crate::config::{Config, Plan};

/// Applies the kernel part of `plan` (towards `new`): `proc_sys` is `/proc/sys`, `module_dir`
/// is `/lib/modules/<release>`, `sethostname` sets the host name. Returns one line per thing
/// done; an error lists every item that failed (the others were still applied).
pub fn reconcile_kernel(
    proc_sys: &Path,
    module_dir: &Path,
    sethostname: &dyn Fn(&str) -> Result<(), String>,
    new: &Config,
    plan: &Plan,
) -> Result<Vec<String>, NodeError> {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    if let Some(change) = &plan.hostname {
        match sethostname(&new.hostname) {
            Ok(()) => done.push(format!("hostname: {} -> {}", change.from, change.to)),
            Err(e) => failed.push(format!("hostname {}: {e}", new.hostname)),
        }
    }
    for (key, (_, value)) in &plan.sysctl_set {
        match ros_sysctl::apply_one(proc_sys, key, value) {
            Ok(()) => done.push(format!("sysctl {key} = {value}")),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if !plan.sysctl_removed.is_empty() {
        let shipped = ros_sysctl::merged_settings(&BTreeMap::new()).unwrap_or_default();
        for key in &plan.sysctl_removed {
            match shipped.get(&ros_sysctl::normalize_key(key)) {
                Some(value) => match ros_sysctl::apply_one(proc_sys, key, value) {
                    Ok(()) => done.push(format!("sysctl {key} = {value} (shipped default)")),
                    Err(e) => failed.push(e.to_string()),
                },
                None => done.push(format!(
                    "sysctl {key}: no longer configured; the kernel keeps its value until reboot"
                )),
            }
        }
    }
    if !plan.modules_added.is_empty() {
        match modules::ModuleDb::load(module_dir) {
            Ok(db) => {
                for name in &plan.modules_added {
                    match modules::load(&db, module_dir, name) {
                        Ok(_) => done.push(format!("module {name} loaded")),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
            }
            Err(e) => failed.push(format!("kernel.modules: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(NodeError::Failed {
            what: "kernel settings".to_string(),
            reason: failed.join("; "),
        })
    }
}

/// [`reconcile_kernel`] on the running kernel.
pub fn reconcile_kernel_live(new: &Config, plan: &Plan) -> Result<Vec<String>, NodeError> {
    reconcile_kernel(
        Path::new("/proc/sys"),
        &modules::module_dir(),
        &|name| nix::unistd::sethostname(name).map_err(|e| e.to_string()),
        new,
        plan,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{effective, Layer};
    use std::cell::RefCell;

    fn config(text: &str) -> Config {
        effective(&[Layer::parse("local", text).unwrap()]).unwrap()
    }

    #[test]
    fn applies_exactly_the_kernel_items_of_the_plan() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        for f in [
            "vm/swappiness",
            "net/ipv4/ip_forward",
            "vm/overcommit_memory",
        ] {
            let p = sys.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "0\n").unwrap();
        }
        let old = config("hostname = \"a\"\n[sysctl]\n\"vm.overcommit_memory\" = 1\n\"net.ipv4.ip_forward\" = 1\n");
        let new = config(
            "hostname = \"b\"\n[sysctl]\n\"vm.swappiness\" = 10\n\"net.ipv4.ip_forward\" = 1\n",
        );
        let plan = Plan::between(&old, &new);
        let named = RefCell::new(Vec::new());
        let set = |n: &str| {
            named.borrow_mut().push(n.to_string());
            Ok(())
        };
        let done = reconcile_kernel(&sys, d.path(), &set, &new, &plan).unwrap();
        assert_eq!(named.borrow().as_slice(), ["b"]);
        assert_eq!(done[0], "hostname: a -> b");
        assert_eq!(done[1], "sysctl vm.swappiness = 10");
        assert!(
            done[2].starts_with("sysctl vm.overcommit_memory"),
            "{done:?}"
        );
        assert_eq!(
            std::fs::read_to_string(sys.join("vm/swappiness")).unwrap(),
            "10\n"
        );
        // Unchanged keys are not written.
        assert_eq!(
            std::fs::read_to_string(sys.join("net/ipv4/ip_forward")).unwrap(),
            "0\n"
        );
    }

    #[test]
    fn failures_are_reported_together_and_the_rest_still_applies() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        std::fs::create_dir_all(sys.join("vm")).unwrap();
        std::fs::write(sys.join("vm/swappiness"), "60\n").unwrap();
        let old = config("version = 1\n");
        let new = config("hostname = \"b\"\n[kernel]\nmodules = [\"nope\"]\n[sysctl]\n\"vm.swappiness\" = 10\n\"vm.missing\" = 1\n");
        let plan = Plan::between(&old, &new);
        let set = |_: &str| Err("EPERM".to_string());
        let e = reconcile_kernel(&sys, d.path(), &set, &new, &plan).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("kernel settings: hostname b: EPERM; "),
            "{text}"
        );
        assert!(text.contains("vm.missing"), "{text}");
        assert!(text.contains("kernel.modules"), "{text}");
        assert_eq!(
            std::fs::read_to_string(sys.join("vm/swappiness")).unwrap(),
            "10\n"
        );
    }
}
