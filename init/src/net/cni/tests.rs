//! The driver against a scripted runner: environment and stdin of every plugin call, the chain
//! order of CHECK and DEL, error objects turned into typed errors, the cache, boot cleanup.
//! (ADD needs a real namespace: `init/tests/cni_netns.rs` covers it with the real plugins.)

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::*;
use crate::config::ports::Protocol;
use crate::config::schema::WorkloadNetwork;

/// Records every invocation and answers from a script (by plugin file name).
struct Scripted {
    calls: Mutex<Vec<Invocation>>,
    answer: Box<dyn Fn(&Invocation) -> Finished + Send + Sync>,
}

impl Scripted {
    fn new(answer: impl Fn(&Invocation) -> Finished + Send + Sync + 'static) -> Arc<Scripted> {
        Arc::new(Scripted {
            calls: Mutex::new(Vec::new()),
            answer: Box::new(answer),
        })
    }

    fn calls(&self) -> Vec<Invocation> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl PluginRunner for Scripted {
    fn run(&self, inv: &Invocation) -> Result<Finished, RunError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(inv.clone());
        }
        Ok((self.answer)(inv))
    }
}

fn ok() -> Finished {
    Finished {
        exit: Exit::Code(0),
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}

fn env<'a>(inv: &'a Invocation, key: &str) -> &'a str {
    inv.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("<unset>")
}

fn plugin(inv: &Invocation) -> String {
    inv.program
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn stdin(inv: &Invocation) -> Value {
    serde_json::from_slice(&inv.stdin).unwrap_or(Value::Null)
}

fn driver(dir: &Path, runner: Arc<Scripted>) -> Cni {
    let paths = Paths {
        plugins: "/usr/lib/cni".into(),
        state: dir.join("state"),
        netns: dir.join("netns"),
        iptables: "/usr/sbin/iptables".into(),
        iptables_restore: "/usr/sbin/iptables-restore".into(),
        iptables_save: "/usr/sbin/iptables-save".into(),
        path_env: "/usr/sbin:/usr/bin".into(),
    };
    let net =
        WorkloadNet::new(&WorkloadNetwork::default(), &[], &[]).unwrap_or_else(|e| panic!("{e}"));
    Cni::new(paths, net, runner)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

/// A cache entry as `attach` writes it.
fn cache(cni: &Cni, workload: &str, netns: &Path) {
    let cached = Cached {
        cni_version: CNI_VERSION.into(),
        workload: workload.into(),
        netns: netns.to_owned(),
        ports: vec![PortMapping {
            host: 8080,
            container: 80,
            protocol: Protocol::Tcp,
        }],
        result: serde_json::from_str(include_str!("golden/01_bridge_result.json"))
            .unwrap_or(Value::Null),
    };
    let text = serde_json::to_vec(&cached).unwrap_or_default();
    write_atomic(&cni.cache_path(workload), &text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn check_runs_the_chain_in_order_with_the_cached_result_and_the_cni_environment() {
    let dir = tempdir();
    let runner = Scripted::new(|_| ok());
    let cni = driver(dir.path(), runner.clone());
    cache(&cni, "web", Path::new("/run/ros/netns/web"));
    assert_eq!(cni.check("web"), Ok(()));
    let calls = runner.calls();
    assert_eq!(
        calls.iter().map(plugin).collect::<Vec<_>>(),
        ["loopback", "bridge", "portmap", "firewall"]
    );
    let bridge = &calls[1];
    assert_eq!(env(bridge, "CNI_COMMAND"), "CHECK");
    assert_eq!(env(bridge, "CNI_CONTAINERID"), "web");
    assert_eq!(env(bridge, "CNI_NETNS"), "/run/ros/netns/web");
    assert_eq!(env(bridge, "CNI_IFNAME"), "eth0");
    assert_eq!(env(bridge, "CNI_ARGS"), "");
    assert_eq!(env(bridge, "CNI_PATH"), "/usr/lib/cni");
    assert_eq!(env(bridge, "PATH"), "/usr/sbin:/usr/bin");
    assert_eq!(env(&calls[0], "CNI_IFNAME"), "lo");
    let s = stdin(&calls[2]);
    assert_eq!(s["name"], "ros0");
    assert_eq!(s["cniVersion"], "1.0.0");
    assert_eq!(s["prevResult"]["ips"][0]["address"], "10.88.0.2/16");
    assert_eq!(s["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert!(stdin(&calls[3]).get("runtimeConfig").is_none());
}

#[test]
fn address_of_reads_the_cache_and_is_none_when_detached() {
    let dir = tempdir();
    let cni = driver(dir.path(), Scripted::new(|_| ok()));
    assert_eq!(cni.address_of("web"), None);
    cache(&cni, "web", Path::new("/run/ros/netns/web"));
    assert_eq!(
        cni.address_of("web").map(|a| a.to_string()),
        Some("10.88.0.2/16".to_string())
    );
    assert_eq!(cni.detach("web"), Ok(()));
    assert_eq!(cni.address_of("web"), None);
}

#[test]
fn check_without_attach_names_the_workload() {
    let dir = tempdir();
    let cni = driver(dir.path(), Scripted::new(|_| ok()));
    assert_eq!(
        cni.check("web").map_err(|e| e.to_string()),
        Err("workloads.web: not attached to ros0 (no cached CNI result)".into())
    );
}

#[test]
fn detach_deletes_in_reverse_order_and_forgets_the_cache() {
    let dir = tempdir();
    let runner = Scripted::new(|_| ok());
    let cni = driver(dir.path(), runner.clone());
    // The namespace is gone (a crash): DEL runs without CNI_NETNS and skips the loopback.
    cache(&cni, "web", &dir.path().join("netns/web"));
    assert_eq!(cni.detach("web"), Ok(()));
    let calls = runner.calls();
    // … then ros looks for masquerade rules the bridge plugin left (none here: empty dump).
    assert_eq!(
        calls.iter().map(plugin).collect::<Vec<_>>(),
        ["firewall", "portmap", "bridge", "iptables-save"]
    );
    let calls = &calls[..3];
    assert!(calls.iter().all(|c| env(c, "CNI_COMMAND") == "DEL"));
    assert!(calls.iter().all(|c| env(c, "CNI_NETNS").is_empty()));
    assert_eq!(stdin(&calls[2])["prevResult"]["cniVersion"], "1.0.0");
    assert!(!cni.cache_path("web").exists());
    // Again: nothing cached, still a clean DEL.
    assert_eq!(cni.detach("web"), Ok(()));
}

#[test]
fn plugin_errors_name_workload_plugin_and_command() {
    let dir = tempdir();
    let runner = Scripted::new(|inv| {
        if plugin(inv) == "portmap" {
            Finished {
                exit: Exit::Code(1),
                stdout: br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid portmap config","details":"bad port"}"#.to_vec(),
                stderr: Vec::new(),
            }
        } else if plugin(inv) == "firewall" {
            Finished {
                exit: Exit::Signal(9),
                stdout: Vec::new(),
                stderr: b"killed\n".to_vec(),
            }
        } else {
            ok()
        }
    });
    let cni = driver(dir.path(), runner.clone());
    cache(&cni, "web", Path::new("/run/ros/netns/web"));
    let err = cni.check("web");
    assert_eq!(
        err.as_ref().map_err(|e| e.to_string()),
        Err("workloads.web: CNI CHECK portmap: invalid portmap config (code 7, invalid network config): bad port".to_string())
    );
    assert!(matches!(err, Err(CniError::Plugin { ref plugin, .. }) if plugin == "portmap"));
    // DEL goes on past a failing plugin and reports the first failure; the cache stays for a
    // retry.
    let err = cni.detach("web").map_err(|e| e.to_string());
    assert_eq!(
        err,
        Err("workloads.web: CNI DEL firewall: killed by signal 9: killed".into())
    );
    let dels: Vec<String> = runner
        .calls()
        .iter()
        .filter(|c| env(c, "CNI_COMMAND") == "DEL")
        .map(plugin)
        .collect();
    assert_eq!(dels, ["firewall", "portmap", "bridge"]);
    assert!(cni.cache_path("web").exists());
}

#[test]
fn ipam_store_is_read_as_address_and_owner() {
    let dir = tempdir();
    let store = dir.path().join("ros0");
    fs::create_dir_all(&store).unwrap_or_else(|e| panic!("{e}"));
    for (name, text) in [
        ("10.88.0.2", "web\r\neth0"),
        ("10.88.0.3", "db\r\neth0"),
        ("last_reserved_ip.0", "10.88.0.3"),
        ("lock", ""),
    ] {
        fs::write(store.join(name), text).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(
        ipam_owners(&store),
        vec![
            (Ipv4Addr::new(10, 88, 0, 2), "web".to_string()),
            (Ipv4Addr::new(10, 88, 0, 3), "db".to_string()),
        ]
    );
    assert!(ipam_owners(&dir.path().join("missing")).is_empty());
}

#[test]
fn cleanup_detaches_what_is_not_live() {
    let dir = tempdir();
    let runner = Scripted::new(|_| ok());
    let cni = driver(dir.path(), runner.clone());
    let store = cni.paths.ipam().join(BRIDGE);
    fs::create_dir_all(&store).unwrap_or_else(|e| panic!("{e}"));
    fs::write(store.join("10.88.0.2"), "web\r\neth0").unwrap_or_else(|e| panic!("{e}"));
    fs::write(store.join("10.88.0.3"), "old\r\neth0").unwrap_or_else(|e| panic!("{e}"));
    cache(&cni, "cached-only", Path::new("/nowhere"));
    fs::create_dir_all(&cni.paths.netns).unwrap_or_else(|e| panic!("{e}"));
    fs::write(cni.paths.netns.join("placeholder"), "").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cni.known().into_iter().collect::<Vec<_>>(),
        ["cached-only", "old", "placeholder", "web"]
    );
    let live: BTreeSet<String> = ["web".to_string()].into();
    let done = cni.cleanup(&live);
    assert_eq!(
        done.iter().map(|c| c.workload.as_str()).collect::<Vec<_>>(),
        ["cached-only", "old", "placeholder"]
    );
    assert!(done.iter().all(|c| c.outcome.is_ok()));
    let ids: BTreeSet<String> = runner
        .calls()
        .iter()
        .map(|c| env(c, "CNI_CONTAINERID").to_string())
        .filter(|id| id != "<unset>")
        .collect();
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        ["cached-only", "old", "placeholder"]
    );
    assert!(!cni.paths.netns.join("placeholder").exists());
    assert!(!cni.cache_path("cached-only").exists());
}
