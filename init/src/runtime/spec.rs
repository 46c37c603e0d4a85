//! OCI runtime specs for services and workloads: the image's config (entrypoint, cmd, env,
//! working dir, user) combined with the container's keys from os-config.toml.
//!
//! Owns the security shape of each kind (DESIGN.md "containerd: two instances"): a privileged
//! service gets every capability, the host's devices and writable /sys; everything else gets
//! Docker's default capability set, no_new_privs, containerd's masked and read-only paths and a
//! device allow-list. Pure: no I/O, so every rule is unit-tested. It does not pick cgroup paths,
//! log files or a bridge container's network namespace and resolv.conf (the caller passes them:
//! [`BridgePaths`]). A container with `shim = "shared"` gets the shim-group annotation.
//!
//! Networking by `net`: `host` shares the host's network and UTS namespaces and bind-mounts the
//! host's `/etc/resolv.conf` read-only; `none` gets new, empty ones (loopback only) and the
//! image's resolv.conf; `bridge` joins the named network namespace the CNI driver attached
//! (`path` in the spec, so runc does not create one) with the resolv.conf written for it
//! bind-mounted read-only, and keeps its own UTS namespace and hostname.

use crate::config::schema::{Container, Kind, NetMode, Shim};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilities, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

/// What the image itself says about how to run it (OCI image config `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageConfig {
    /// Reads the runtime part of an OCI image configuration blob.
    pub fn from_json(name: &str, json: &[u8]) -> Result<Self, SpecError> {
        let cfg: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(json).map_err(|e| SpecError::ImageConfig {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        let Some(c) = cfg.config() else {
            return Ok(Self::default());
        };
        Ok(ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "{name}: nothing to run: neither the image nor the config gives an entrypoint or command"
    )]
    NoCommand { name: String },
    #[error("{name}: user `{user}`: only numeric uid[:gid] is supported")]
    User { name: String, user: String },
    #[error("{name}: capabilities: unknown capability `{cap}`")]
    Capability { name: String, cap: String },
    #[error("{name}: image config: {reason}")]
    ImageConfig { name: String, reason: String },
    #[error("{name}: building the spec: {reason}")]
    Build { name: String, reason: String },
    #[error("{name}: net = \"bridge\" without an attached network namespace")]
    NoBridge { name: String },
}

/// Where a `net = "bridge"` container's network is: the named network namespace the CNI
/// driver attaches (at the same path for every task of the container) and the resolv.conf
/// written from its CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePaths {
    /// The network namespace file (`/run/ros/netns/<name>`).
    pub netns: PathBuf,
    /// The container's resolv.conf on the host, bind-mounted read-only.
    pub resolv_conf: PathBuf,
}

/// Everything `build` needs besides the container's own config.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// The container's name (`services.NAME` / `workloads.NAME`).
    pub name: &'a str,
    pub kind: Kind,
    pub container: &'a Container,
    pub image: &'a ImageConfig,
    /// Where runc puts the container's cgroup.
    pub cgroups_path: String,
    /// The network of a `net = "bridge"` container (required for one, ignored otherwise).
    pub bridge: Option<BridgePaths>,
}

/// The OCI annotation the runc v2 shim reads to run containers of one group in one shim
/// process (containerd's `groupLabels`; Kubernetes uses the sandbox id the same way).
pub const SHIM_GROUP: &str = "io.containerd.runc.v2.group";

/// The shim group of a container, if it shares one: `ros-services` or `ros-workloads` (each
/// containerd instance has its own shims, so the names only need to differ within one).
pub fn shim_group(kind: Kind, shim: Shim) -> Option<&'static str> {
    match (shim, kind) {
        (Shim::Own, _) => None,
        (Shim::Shared, Kind::Service) => Some("ros-services"),
        (Shim::Shared, Kind::Workload) => Some("ros-workloads"),
    }
}

/// Docker's default capability set: what a workload or an unprivileged service gets.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn build_err(name: &str) -> impl Fn(oci_spec::OciSpecError) -> SpecError + '_ {
    move |e| SpecError::Build {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// `"CHOWN"` and `"CAP_CHOWN"` alike, case-insensitive.
fn parse_cap(name: &str, cap: &str) -> Result<Capability, SpecError> {
    let upper = cap.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    // Capability's serde names are the kernel's (`CAP_CHOWN`); its FromStr wants `CHOWN`.
    serde_json::from_value(serde_json::Value::String(full)).map_err(|_| SpecError::Capability {
        name: name.into(),
        cap: cap.into(),
    })
}

/// The capability set: all for privileged services, else the default set, then add/drop.
pub fn capabilities(input: &SpecInput) -> Result<HashSet<Capability>, SpecError> {
    let c = input.container;
    let mut set: HashSet<Capability> = if c.privileged && input.kind == Kind::Service {
        all_caps()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|s| parse_cap(input.name, s))
            .collect::<Result<_, _>>()?
    };
    for a in &c.capabilities.add {
        if a.eq_ignore_ascii_case("ALL") {
            set = all_caps();
        } else {
            set.insert(parse_cap(input.name, a)?);
        }
    }
    for d in &c.capabilities.drop {
        if d.eq_ignore_ascii_case("ALL") {
            set.clear();
        } else {
            set.remove(&parse_cap(input.name, d)?);
        }
    }
    Ok(set)
}

/// Every capability Linux 6.12 knows.
const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn all_caps() -> HashSet<Capability> {
    ALL_CAPS
        .iter()
        .filter_map(|c| parse_cap("", c).ok())
        .collect()
}

/// argv: a config entrypoint replaces the image's and, as in Docker, drops the image's cmd; a
/// config command replaces the image's cmd.
pub fn argv(input: &SpecInput) -> Result<Vec<String>, SpecError> {
    let c = input.container;
    let (entry, cmd) = match (&c.entrypoint, &c.command) {
        (Some(e), Some(cmd)) => (e.clone(), cmd.clone()),
        (Some(e), None) => (e.clone(), Vec::new()),
        (None, Some(cmd)) => (input.image.entrypoint.clone(), cmd.clone()),
        (None, None) => (input.image.entrypoint.clone(), input.image.cmd.clone()),
    };
    let argv: Vec<String> = entry.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(SpecError::NoCommand {
            name: input.name.into(),
        });
    }
    Ok(argv)
}

/// Image env, then config env on top (same key: config wins), sorted by first appearance.
pub fn env(input: &SpecInput) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut vals: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        if !vals.contains_key(k) {
            order.push(k.to_string());
        }
        vals.insert(k.to_string(), v.to_string());
    };
    put(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for kv in &input.image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        put(k, v);
    }
    for (k, v) in &input.container.env {
        put(k, v);
    }
    order
        .into_iter()
        .map(|k| format!("{k}={}", vals.get(&k).map(String::as_str).unwrap_or("")))
        .collect()
}

/// Numeric `uid[:gid]` (names need the image's /etc/passwd: not supported yet).
fn user(input: &SpecInput) -> Result<(u32, u32), SpecError> {
    let text = input
        .container
        .user
        .clone()
        .unwrap_or_else(|| input.image.user.clone());
    if text.is_empty() {
        return Ok((0, 0));
    }
    let err = || SpecError::User {
        name: input.name.into(),
        user: text.clone(),
    };
    let (u, g) = text.split_once(':').unwrap_or((text.as_str(), ""));
    let uid: u32 = u.parse().map_err(|_| err())?;
    let gid: u32 = if g.is_empty() {
        uid
    } else {
        g.parse().map_err(|_| err())?
    };
    Ok((uid, gid))
}

fn namespaces(net: NetMode, bridge: Option<&BridgePaths>) -> Vec<LinuxNamespace> {
    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if net != NetMode::Host {
        // Host networking shares the host's hostname too, as Docker's --net=host does.
        kinds.push(LinuxNamespaceType::Uts);
    }
    let mut out: Vec<LinuxNamespace> = kinds
        .into_iter()
        .filter_map(|t| LinuxNamespaceBuilder::default().typ(t).build().ok())
        .collect();
    let network = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    let network = match (net, bridge) {
        (NetMode::Host, _) => None,
        // Joined, not created: the CNI driver attached it before the task starts.
        (NetMode::Bridge, Some(b)) => network.path(b.netns.clone()).build().ok(),
        (NetMode::None | NetMode::Bridge, _) => network.build().ok(),
    };
    out.extend(network);
    out
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Option<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .ok()
}

fn mounts(input: &SpecInput, privileged: bool) -> Vec<Mount> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut out: Vec<Mount> = [
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    match (input.container.net_mode(input.kind), &input.bridge) {
        // The host's resolver settings, kept current by ros, read-only.
        (NetMode::Host, _) => out.extend(mount(
            "/etc/resolv.conf",
            "bind",
            "/etc/resolv.conf",
            &["rbind", "ro"],
        )),
        // The workload's, written from its CNI result before each task starts.
        (NetMode::Bridge, Some(b)) => out.extend(mount(
            "/etc/resolv.conf",
            "bind",
            &b.resolv_conf.display().to_string(),
            &["rbind", "ro"],
        )),
        (NetMode::None | NetMode::Bridge, _) => {}
    }
    for m in &input.container.mounts {
        let mut opts: Vec<&str> = vec!["rbind"];
        opts.push(if m.read_only { "ro" } else { "rw" });
        opts.extend(m.options.iter().map(String::as_str));
        out.extend(mount(&m.target, "bind", &m.source, &opts));
    }
    out
}

/// The devices an unprivileged container may use: the standard character devices.
fn device_allow_list() -> Vec<LinuxDeviceCgroup> {
    let dev = |allow: bool,
               typ: Option<LinuxDeviceType>,
               major: Option<i64>,
               minor: Option<i64>,
               access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default();
        b = b.allow(allow).access(access);
        if let Some(t) = typ {
            b = b.typ(t);
        }
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().ok()
    };
    let c = Some(LinuxDeviceType::C);
    [
        dev(false, None, None, None, "rwm"),
        dev(true, c, Some(1), Some(3), "rwm"), // null
        dev(true, c, Some(1), Some(5), "rwm"), // zero
        dev(true, c, Some(1), Some(7), "rwm"), // full
        dev(true, c, Some(1), Some(8), "rwm"), // random
        dev(true, c, Some(1), Some(9), "rwm"), // urandom
        dev(true, c, Some(5), Some(0), "rwm"), // tty
        dev(true, c, Some(5), Some(2), "rwm"), // ptmx
        dev(true, c, Some(136), None, "rwm"),  // pts
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Builds the runtime spec of one container.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let c = input.container;
    let privileged = c.privileged && input.kind == Kind::Service;
    if c.net_mode(input.kind) == NetMode::Bridge && input.bridge.is_none() {
        return Err(SpecError::NoBridge {
            name: input.name.into(),
        });
    }
    let err = build_err(input.name);
    let caps = capabilities(input)?;
    let capabilities = LinuxCapabilities::default();
    let mut capabilities = capabilities;
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps.clone()));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    let (uid, gid) = user(input)?;
    let cwd = c
        .working_dir
        .clone()
        .unwrap_or_else(|| input.image.working_dir.clone());
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(&err)?,
        )
        .args(argv(input)?)
        .env(env(input))
        .cwd(if cwd.is_empty() { "/".to_string() } else { cwd })
        .capabilities(capabilities)
        .no_new_privileges(!privileged)
        .build()
        .map_err(&err)?;

    let mut resources = LinuxResourcesBuilder::default();
    if let Some(m) = c.memory {
        let bytes = i64::try_from(m.0).unwrap_or(i64::MAX);
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .build()
                .map_err(&err)?,
        );
    }
    if let Some(cpus) = c.cpus {
        let period: u64 = 100_000;
        let quota = (cpus * period as f64).round() as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota(quota)
                .build()
                .map_err(&err)?,
        );
    }
    if let Some(p) = c.pids {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(i64::try_from(p).unwrap_or(i64::MAX))
                .build()
                .map_err(&err)?,
        );
    }
    let devices = if privileged {
        vec![LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()
            .map_err(&err)?]
    } else {
        device_allow_list()
    };
    resources = resources.devices(devices);

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(c.net_mode(input.kind), input.bridge.as_ref()))
        .resources(resources.build().map_err(&err)?)
        .cgroups_path(input.cgroups_path.clone());
    linux = if privileged {
        linux.masked_paths(Vec::new()).readonly_paths(Vec::new())
    } else {
        linux
            .masked_paths(oci_spec::runtime::get_default_maskedpaths())
            .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
    };
    let mut spec = Spec::default();
    spec.set_version("1.1.0".to_string());
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(c.read_only)
            .build()
            .map_err(&err)?,
    ));
    spec.set_hostname(if c.net_mode(input.kind) == NetMode::Host {
        None
    } else {
        Some(input.name.to_string())
    });
    spec.set_mounts(Some(mounts(input, privileged)));
    spec.set_linux(Some(linux.build().map_err(&err)?));
    spec.set_annotations(
        shim_group(input.kind, c.shim)
            .map(|g| HashMap::from([(SHIM_GROUP.to_string(), g.to_string())])),
    );
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{Capabilities, ContainerMount};

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/docker-entrypoint.sh".into()],
            cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            env: vec!["PATH=/usr/bin".into(), "NGINX_VERSION=1.27".into()],
            working_dir: "/srv".into(),
            user: String::new(),
        }
    }

    fn input<'a>(
        name: &'a str,
        kind: Kind,
        c: &'a Container,
        img: &'a ImageConfig,
    ) -> SpecInput<'a> {
        SpecInput {
            name,
            kind,
            container: c,
            image: img,
            cgroups_path: format!("/ros/x/{name}"),
            bridge: Some(BridgePaths {
                netns: format!("/run/ros/netns/{name}").into(),
                resolv_conf: format!("/run/ros/resolv/{name}.conf").into(),
            }),
        }
    }

    #[test]
    fn argv_follows_docker_override_rules() {
        let img = image();
        let mut c = Container::default();
        assert_eq!(
            argv(&input("w", Kind::Workload, &c, &img)).unwrap(),
            ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
        );
        c.command = Some(vec!["sleep".into(), "1".into()]);
        assert_eq!(
            argv(&input("w", Kind::Workload, &c, &img)).unwrap(),
            ["/docker-entrypoint.sh", "sleep", "1"]
        );
        c.command = None;
        c.entrypoint = Some(vec!["/bin/sh".into()]);
        assert_eq!(
            argv(&input("w", Kind::Workload, &c, &img)).unwrap(),
            ["/bin/sh"],
            "entrypoint drops the image cmd"
        );
        let empty = ImageConfig::default();
        let err = argv(&input("w", Kind::Workload, &Container::default(), &empty)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "w: nothing to run: neither the image nor the config gives an entrypoint or command"
        );
    }

    #[test]
    fn env_config_wins_over_image_and_keeps_order() {
        let img = image();
        let mut c = Container::default();
        c.env.insert("MODE".into(), "prod".into());
        c.env.insert("PATH".into(), "/opt/bin".into());
        assert_eq!(
            env(&input("w", Kind::Workload, &c, &img)),
            ["PATH=/opt/bin", "NGINX_VERSION=1.27", "MODE=prod"]
        );
    }

    #[test]
    fn workload_gets_default_caps_no_new_privs_masked_paths_and_own_netns() {
        let img = image();
        let c = Container {
            memory: Some(crate::config::units::Memory(256 << 20)),
            cpus: Some(0.5),
            pids: Some(100),
            ..Default::default()
        };
        let spec = build(&input("web", Kind::Workload, &c, &img)).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let bounding = p
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPS.len());
        assert!(!bounding.contains(&Capability::SysAdmin));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(ns.contains(&LinuxNamespaceType::Network));
        let r = linux.resources().as_ref().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(256 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 100);
        assert_eq!(
            linux.cgroups_path().as_ref().unwrap().to_str(),
            Some("/ros/x/web")
        );
        assert_eq!(spec.hostname().as_deref(), Some("web"));
        assert_eq!(p.cwd().to_str(), Some("/srv"));
    }

    #[test]
    fn shared_services_and_workloads_share_a_shim_per_kind_and_the_rest_have_their_own() {
        let img = image();
        let group = |kind, shim| {
            let c = Container {
                shim,
                net: Some(NetMode::None),
                ..Default::default()
            };
            let spec = build(&input("x", kind, &c, &img)).unwrap();
            spec.annotations()
                .as_ref()
                .and_then(|a| a.get(SHIM_GROUP).cloned())
        };
        assert_eq!(
            group(Kind::Service, Shim::Shared).as_deref(),
            Some("ros-services")
        );
        assert_eq!(
            group(Kind::Workload, Shim::Shared).as_deref(),
            Some("ros-workloads")
        );
        assert_eq!(group(Kind::Workload, Shim::Own), None);
        assert_eq!(group(Kind::Service, Shim::Own), None);
        assert_eq!(Container::default().shim, Shim::Own);
    }

    #[test]
    fn privileged_service_gets_all_caps_devices_and_host_net() {
        let img = image();
        let c = Container {
            privileged: true,
            ..Default::default()
        };
        let spec = build(&input("syslog", Kind::Service, &c, &img)).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(false));
        assert!(p
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().as_ref().is_none_or(|m| m.is_empty()));
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(
            !ns.contains(&LinuxNamespaceType::Network),
            "services default to host networking"
        );
        let dev = &linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()[0];
        assert!(dev.allow());
        assert!(spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination().to_str() == Some("/etc/resolv.conf")));
    }

    #[test]
    fn bridge_joins_the_attached_namespace_with_its_resolv_conf_and_none_gets_a_new_one() {
        let img = image();
        let c = Container::default();
        let spec = build(&input("web", Kind::Workload, &c, &img)).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let net = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .cloned()
            .unwrap();
        assert_eq!(
            net.path().as_ref().and_then(|p| p.to_str()),
            Some("/run/ros/netns/web")
        );
        assert!(linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Uts));
        assert_eq!(spec.hostname().as_deref(), Some("web"));
        let resolv = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination().to_str() == Some("/etc/resolv.conf"))
            .cloned()
            .unwrap();
        assert_eq!(
            resolv.source().as_ref().and_then(|p| p.to_str()),
            Some("/run/ros/resolv/web.conf")
        );
        assert_eq!(
            resolv.options().as_ref().unwrap(),
            &vec!["rbind".to_string(), "ro".to_string()]
        );

        // Without the attached paths a bridge container cannot be specified.
        let mut no_paths = input("web", Kind::Workload, &c, &img);
        no_paths.bridge = None;
        assert_eq!(
            build(&no_paths).unwrap_err().to_string(),
            "web: net = \"bridge\" without an attached network namespace"
        );

        // net = "none": a new, empty namespace (no path) and the image's own resolv.conf.
        let none = Container {
            net: Some(NetMode::None),
            ..Default::default()
        };
        let spec = build(&input("w", Kind::Workload, &none, &img)).unwrap();
        let net = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .cloned()
            .unwrap();
        assert!(net.path().is_none());
        assert!(!spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination().to_str() == Some("/etc/resolv.conf")));
    }

    #[test]
    fn privileged_is_ignored_for_workloads() {
        let img = image();
        let c = Container {
            privileged: true,
            ..Default::default()
        };
        let spec = build(&input("w", Kind::Workload, &c, &img)).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
    }

    #[test]
    fn cap_add_drop_and_bad_names() {
        let img = image();
        let c = Container {
            capabilities: Capabilities {
                add: vec!["net_admin".into()],
                drop: vec!["CAP_NET_RAW".into()],
            },
            ..Default::default()
        };
        let caps = capabilities(&input("w", Kind::Workload, &c, &img)).unwrap();
        assert!(caps.contains(&Capability::NetAdmin) && !caps.contains(&Capability::NetRaw));
        let bad = Container {
            capabilities: Capabilities {
                add: vec!["FLY".into()],
                drop: vec![],
            },
            ..Default::default()
        };
        let err = capabilities(&input("w", Kind::Workload, &bad, &img)).unwrap_err();
        assert_eq!(err.to_string(), "w: capabilities: unknown capability `FLY`");
    }

    #[test]
    fn user_mounts_and_numeric_users() {
        let img = image();
        let c = Container {
            user: Some("1000:100".into()),
            mounts: vec![ContainerMount {
                source: "/var/lib/ros/volumes/web".into(),
                target: "/data".into(),
                options: vec![],
                read_only: true,
            }],
            net: Some(NetMode::None),
            ..Default::default()
        };
        let spec = build(&input("w", Kind::Workload, &c, &img)).unwrap();
        let u = spec.process().as_ref().unwrap().user();
        assert_eq!((u.uid(), u.gid()), (1000, 100));
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination().to_str() == Some("/data"))
            .unwrap();
        assert_eq!(
            m.options().as_ref().unwrap(),
            &vec!["rbind".to_string(), "ro".to_string()]
        );
        let named = Container {
            user: Some("nginx".into()),
            ..Default::default()
        };
        assert!(matches!(
            build(&input("w", Kind::Workload, &named, &img)),
            Err(SpecError::User { .. })
        ));
    }

    #[test]
    fn image_config_parses_from_oci_json() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/busybox"],"Cmd":["syslogd","-n"],"Env":["A=1"],"WorkingDir":"/w"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::from_json("syslog", json).unwrap();
        assert_eq!(c.entrypoint, ["/bin/busybox"]);
        assert_eq!(c.cmd, ["syslogd", "-n"]);
        assert_eq!(c.working_dir, "/w");
        assert!(ImageConfig::from_json("x", b"{")
            .unwrap_err()
            .to_string()
            .starts_with("x: image config:"));
    }
}
