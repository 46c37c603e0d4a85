//! `ros config …`: the clap structs of every config subcommand, and the offline ones —
//! `validate|get|set|unset --file PATH` — on one file.
//!
//! Owns: the clap structs (`--file` selects the offline mode; without it `cli::remote` sends the
//! command to the running node), reading the file, applying edits through `config::Document`
//! (comments kept, all edits checked together, written once with `write_atomic`; the file is
//! untouched when the check fails), and turning offline outcomes into output and exit status:
//! 0 done, 1 invalid config or unset key (`ros: FILE: KEY (line L): REASON`), 2 bad usage.
//! Must not: hold config logic (it lives in `crate::config`), or talk to the daemon (`remote`
//! does).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::{self, edit, keypath, ConfigError, Document};

use super::table::{parse_duration, Output};

/// `ros config …`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Work on this config file, offline, instead of the running node (validate, get, set,
    /// unset).
    #[arg(long, global = true, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Print the plan only; change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Revert the change by itself unless `ros config confirm` arrives within DURATION
    /// (`20s`, `2m`).
    #[arg(long = "try", global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub try_for: Option<std::time::Duration>,
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// The brief's name for [`ConfigArgs`].
pub type ConfigFileArgs = ConfigArgs;

/// The `ros config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a config strictly: syntax, keys, types, values and dependencies. With `--file`, the
    /// file on top of the compiled-in defaults; else FILE (or the current local layer) as the
    /// live node's local layer, printing what applying it would change.
    Validate {
        /// A candidate local layer (live node only).
        path: Option<PathBuf>,
    },
    /// Print the value of KEY (the whole config without KEY): the effective one, or with
    /// `--local` the local layer's. With `--file`: the file's own, else the effective one.
    Get {
        /// Dotted key, e.g. network.interfaces.eth1.mtu or sysctl.net.ipv4.ip_forward.
        key: Option<String>,
        /// Read the local layer (the current generation) instead of the effective config.
        #[arg(long)]
        local: bool,
    },
    /// Set keys: `KEY VALUE`, or one or more `KEY=VALUE`. Values are TOML literals, else strings.
    Set {
        /// `KEY VALUE` or `KEY=VALUE`...
        #[arg(required = true, num_args = 1.., allow_negative_numbers = true, value_name = "KEY VALUE | KEY=VALUE")]
        args: Vec<String>,
    },
    /// Remove keys from the local layer (or the file).
    Unset {
        /// Dotted keys.
        #[arg(required = true, num_args = 1..)]
        keys: Vec<String>,
    },
    /// Replace the whole local layer with FILE.
    Apply {
        /// The new local layer.
        path: PathBuf,
        /// Refuse unless generation N is still current (the one FILE was made from).
        #[arg(long, value_name = "N")]
        base: Option<u64>,
    },
    /// Print the effective config (`--local`: the local layer) as TOML.
    Export {
        /// Print the local layer (the current generation) instead.
        #[arg(long)]
        local: bool,
    },
    /// List the config generations and their states (the current one marked `*`).
    History,
    /// Make generation N (default: the last good one before the current) current, as a new
    /// generation.
    Rollback {
        /// The generation to go back to.
        generation: Option<u64>,
    },
    /// Edit the local layer in $VISUAL/$EDITOR and apply it (refused if another change landed
    /// meanwhile).
    Edit,
    /// Keep the change made with `--try`.
    Confirm,
}

/// Why a command did not succeed; each maps to one exit status.
#[derive(Debug)]
enum Failure {
    /// The config is invalid (exit 1).
    Config(ConfigError),
    /// A key has no value (exit 1).
    NotSet { source: String, key: String },
    /// Bad usage (exit 2).
    Usage(String),
    /// Reading or writing failed (exit 1 through anyhow).
    Io(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::NotSet { key, source_name } => Failure::NotSet {
                source: source_name,
                key,
            },
            other => Failure::Config(other),
        }
    }
}

/// Runs `ros config …`; returns the exit status. Errors are printed here except I/O failures,
/// which are returned for the caller to print as `ros: …`.
pub fn run(args: ConfigArgs, socket: &Path, output: Output) -> anyhow::Result<i32> {
    let Some(file) = args.file.clone() else {
        return Ok(match super::remote::config(args, socket, output) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ros: {e}");
                e.exit_code()
            }
        });
    };
    let result = match args.command {
        ConfigCommand::Validate { path: None } => validate(&file).map(|()| None),
        ConfigCommand::Get {
            key: Some(key),
            local: false,
        } => get(&file, &key).map(Some),
        ConfigCommand::Get { .. } => Err(Failure::Usage(
            "get --file: KEY is required (and --local does not apply)".to_string(),
        )),
        ConfigCommand::Set { args } => set(&file, &args).map(|()| None),
        ConfigCommand::Unset { keys } => unset(&file, &keys).map(|()| None),
        ConfigCommand::Validate { path: Some(_) }
        | ConfigCommand::Apply { .. }
        | ConfigCommand::Export { .. }
        | ConfigCommand::History
        | ConfigCommand::Rollback { .. }
        | ConfigCommand::Edit
        | ConfigCommand::Confirm => Err(Failure::Usage(
            "this subcommand works on the running node only; drop --file".to_string(),
        )),
    };
    if args.dry_run || args.try_for.is_some() {
        eprintln!(
            "ros: config: --dry-run and --try apply to the running node only; ignored with --file"
        );
    }
    match result {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            Ok(0)
        }
        Err(Failure::Config(e)) => {
            eprintln!("ros: {}", located(&e));
            Ok(1)
        }
        Err(Failure::NotSet { source, key }) => {
            eprintln!("ros: {source}: {key} is not set");
            Ok(1)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("ros: config: {msg}");
            Ok(2)
        }
        Err(Failure::Io(e)) => Err(e),
    }
}

/// `FILE: KEY (line L): REASON`, or `FILE: KEY: REASON` when the line is not known.
fn located(e: &ConfigError) -> String {
    match e.line() {
        Some(_) => format!("{}: {e}", e.source_name()),
        None => format!("{}: {}: {}", e.source_name(), e.key(), e.reason()),
    }
}

fn source_of(file: &Path) -> String {
    file.display().to_string()
}

fn read(file: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(file)
        .with_context(|| format!("{}", file.display()))
        .map_err(Failure::Io)
}

fn parse_key(key: &str) -> Result<Vec<String>, Failure> {
    keypath::parse_key(key).map_err(|e| Failure::Usage(format!("invalid key {key:?}: {e}")))
}

fn validate(file: &Path) -> Result<(), Failure> {
    let layer = config::Layer::parse(&source_of(file), &read(file)?)?;
    config::effective(&[layer])?;
    Ok(())
}

fn get(file: &Path, key: &str) -> Result<String, Failure> {
    let segs = parse_key(key)?;
    let doc = Document::parse(&source_of(file), &read(file)?)?;
    if let Some(value) = doc.get(&segs) {
        return Ok(value);
    }
    let effective = config::effective(&[doc.validate()?])?;
    let table = match toml::Value::try_from(&effective) {
        Ok(toml::Value::Table(t)) => t,
        Ok(_) | Err(_) => toml::Table::new(),
    };
    edit::lookup(&table, &segs)
        .map(edit::render)
        .ok_or_else(|| Failure::NotSet {
            source: source_of(file),
            key: key.to_string(),
        })
}

/// Splits `KEY=VALUE` at the first `=` outside quotes.
fn split_assignment(arg: &str) -> Option<(&str, &str)> {
    let mut quote = None;
    for (i, c) in arg.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '=') => return Some((&arg[..i], &arg[i + 1..])),
            _ => {}
        }
    }
    None
}

/// `KEY VALUE` or `KEY=VALUE...` into key/value pairs.
fn assignments(args: &[String]) -> Result<Vec<(&str, &str)>, Failure> {
    if let [key, value] = args {
        if split_assignment(key).is_none() {
            return Ok(vec![(key.as_str(), value.as_str())]);
        }
    }
    args.iter()
        .map(|a| {
            split_assignment(a).ok_or_else(|| {
                Failure::Usage(format!(
                    "set: expected KEY VALUE or KEY=VALUE..., got {a:?}"
                ))
            })
        })
        .collect()
}

/// `KEY VALUE` or `KEY=VALUE...` as owned pairs; the error is the usage message.
pub fn split_assignments(args: &[String]) -> Result<Vec<(String, String)>, String> {
    match assignments(args) {
        Ok(pairs) => Ok(pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()),
        Err(Failure::Usage(msg)) => Err(format!("config: {msg}")),
        Err(other) => Err(format!("config: {other:?}")),
    }
}

fn set(file: &Path, args: &[String]) -> Result<(), Failure> {
    let pairs = assignments(args)?;
    let mut edits = Vec::new();
    for (key, value) in pairs {
        edits.push((parse_key(key)?, keypath::parse_edit_value(value)));
    }
    let source = source_of(file);
    let mut doc = match std::fs::read_to_string(file) {
        Ok(text) => Document::parse(&source, &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Document::new_layer(&source),
        Err(e) => return Err(Failure::Io(anyhow::Error::new(e).context(source))),
    };
    doc.set_all(&edits)?;
    write(file, &doc)
}

fn unset(file: &Path, keys: &[String]) -> Result<(), Failure> {
    let mut doc = Document::parse(&source_of(file), &read(file)?)?;
    for key in keys {
        doc.unset(&parse_key(key)?)?;
    }
    write(file, &doc)
}

fn write(file: &Path, doc: &Document) -> Result<(), Failure> {
    edit::write_atomic(file, &doc.text())
        .with_context(|| format!("{}: write", file.display()))
        .map_err(Failure::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Config(ConfigArgs),
    }

    fn parse(argv: &[&str]) -> ConfigArgs {
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Top::Config(args),
            }) => args,
            Err(e) => panic!("{argv:?}: {e}"),
        }
    }

    fn tmp() -> (tempfile::TempDir, PathBuf) {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let path = dir.path().join("os-config.toml");
        (dir, path)
    }

    fn write_file(path: &Path, text: &str) {
        if let Err(e) = std::fs::write(path, text) {
            panic!("{e}");
        }
    }

    fn read_file(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run_file(args: ConfigArgs) -> anyhow::Result<i32> {
        run(args, Path::new(NO_DAEMON), Output::Table)
    }

    fn strs(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn clap_accepts_both_set_forms_and_file_anywhere() {
        let a = parse(&[
            "ros",
            "config",
            "set",
            "network.interfaces.eth1.mtu",
            "1500",
            "--file",
            "/x",
        ]);
        assert_eq!(a.file, Some(PathBuf::from("/x")));
        assert!(
            matches!(a.command, ConfigCommand::Set { ref args } if args == &strs(&["network.interfaces.eth1.mtu", "1500"]))
        );
        let a = parse(&["ros", "config", "--file", "/x", "set", "a=1", "b=2"]);
        assert!(matches!(a.command, ConfigCommand::Set { ref args } if args.len() == 2));
        let a = parse(&["ros", "config", "set", "sysctl.vm.x", "-1", "--file", "/x"]);
        assert!(matches!(a.command, ConfigCommand::Set { ref args } if args[1] == "-1"));
        let a = parse(&["ros", "config", "get", "hostname"]);
        assert_eq!(a.file, None);
        assert!(Cli::try_parse_from(["ros", "config", "set", "--file", "/x"]).is_err());
    }

    const NO_DAEMON: &str = "/nonexistent-ros-test/ros.sock";

    #[test]
    fn without_file_the_daemon_is_asked() {
        let code = run(
            parse(&["ros", "config", "validate"]),
            Path::new(NO_DAEMON),
            Output::Table,
        );
        assert_eq!(code.ok(), Some(1));
        let a = parse(&[
            "ros",
            "config",
            "set",
            "hostname=a",
            "--dry-run",
            "--try",
            "20s",
        ]);
        assert!(a.dry_run);
        assert_eq!(a.try_for, Some(std::time::Duration::from_secs(20)));
        let code = run(
            parse(&["ros", "config", "history", "--file", "/x"]),
            Path::new(NO_DAEMON),
            Output::Table,
        );
        assert_eq!(code.ok(), Some(2));
    }

    #[test]
    fn set_creates_a_missing_file_with_version() {
        let (_d, path) = tmp();
        assert!(set(&path, &strs(&["hostname", "node-2"])).is_ok());
        assert_eq!(read_file(&path), "version = 1\nhostname = \"node-2\"\n");
    }

    #[test]
    fn set_many_pairs_writes_once_and_keeps_comments() {
        let (_d, path) = tmp();
        write_file(&path, "# mine\nversion = 1\nhostname = \"a\" # name\n");
        let r = set(
            &path,
            &strs(&[
                "hostname=b",
                "sysctl.net.ipv4.ip_forward=1",
                "registries.\"a.b:5000\".insecure=true",
            ]),
        );
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            read_file(&path),
            "# mine\nversion = 1\nhostname = \"b\" # name\n\n[sysctl]\n\"net.ipv4.ip_forward\" = 1\n\n[registries.\"a.b:5000\"]\ninsecure = true\n"
        );
    }

    #[test]
    fn invalid_set_leaves_the_file_untouched_and_exits_1() {
        let (_d, path) = tmp();
        let text = "version = 1\nhostname = \"a\"\n";
        write_file(&path, text);
        let r = set(
            &path,
            &strs(&["hostname=b", "network.interfaces.eth1.mtu=big"]),
        );
        match r {
            Err(Failure::Config(e)) => assert_eq!(
                located(&e),
                format!("{}: network.interfaces.eth1.mtu (line 5): invalid type: string \"big\", expected u32", path.display())
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(read_file(&path), text);
        let code = run_file(parse(&[
            "ros",
            "config",
            "set",
            "network.wait",
            "later",
            "--file",
            &path.display().to_string(),
        ]));
        assert_eq!(code.ok(), Some(1));
        assert_eq!(read_file(&path), text);
    }

    #[test]
    fn set_usage_errors_exit_2() {
        assert!(matches!(
            assignments(&strs(&["hostname"])),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            assignments(&strs(&["a=1", "b"])),
            Err(Failure::Usage(_))
        ));
        assert_eq!(
            assignments(&strs(&["k", "v=w"])).ok(),
            Some(vec![("k", "v=w")])
        );
        assert_eq!(
            assignments(&strs(&["sysctl.\"a=b\"=1"])).ok(),
            Some(vec![("sysctl.\"a=b\"", "1")])
        );
        let (_d, path) = tmp();
        let code = run_file(parse(&[
            "ros",
            "config",
            "set",
            "a..b",
            "1",
            "--file",
            &path.display().to_string(),
        ]));
        assert_eq!(code.ok(), Some(2));
        assert!(!path.exists());
    }

    #[test]
    fn get_prints_the_files_value_else_the_effective_one() {
        let (_d, path) = tmp();
        write_file(
            &path,
            "version = 1\nhostname = \"node-1\"\n[network.interfaces.lan]\nmtu = 1500\n",
        );
        assert_eq!(get(&path, "hostname").ok().as_deref(), Some("node-1"));
        assert_eq!(
            get(&path, "network.interfaces.lan.mtu").ok().as_deref(),
            Some("1500")
        );
        assert_eq!(
            get(&path, "limits.user.memory").ok().as_deref(),
            Some("75%")
        );
        assert_eq!(get(&path, "network.wait").ok().as_deref(), Some("any"));
        // The file names an interface, so the default one is gone from the effective config.
        assert!(matches!(
            get(&path, "network.interfaces.default"),
            Err(Failure::NotSet { .. })
        ));
        assert!(
            matches!(get(&path, "network.interfaces.lan.gateway"), Err(Failure::NotSet { ref key, .. }) if key == "network.interfaces.lan.gateway")
        );
    }

    #[test]
    fn unset_removes_and_reports_absent_keys() {
        let (_d, path) = tmp();
        write_file(&path, "version = 1\nhostname = \"a\"\n");
        assert!(unset(&path, &strs(&["hostname"])).is_ok());
        assert_eq!(read_file(&path), "version = 1\n");
        assert!(matches!(
            unset(&path, &strs(&["hostname"])),
            Err(Failure::NotSet { .. })
        ));
    }

    #[test]
    fn validate_reports_layer_and_merged_errors() {
        let (_d, path) = tmp();
        write_file(
            &path,
            include_str!("../../tests/golden/01_design_example.toml"),
        );
        assert!(validate(&path).is_ok());
        assert_eq!(
            get(&path, "workloads.web.stop_timeout_s").ok().as_deref(),
            Some("10")
        );
        assert_eq!(
            get(&path, "workloads.web.memory").ok().as_deref(),
            Some("256MiB")
        );
        assert_eq!(
            get(&path, "services.syslog.enabled").ok().as_deref(),
            Some("true")
        );
        write_file(
            &path,
            "version = 1\n\n[workloads.web]\nimage = \"w\"\ndepends_on = [\"db\"]\n",
        );
        match validate(&path) {
            Err(Failure::Config(e)) => assert_eq!(
                located(&e),
                format!("{}: workloads.web.depends_on (line 5): depends on \"db\", but no workload or service has that name", path.display())
            ),
            other => panic!("{other:?}"),
        }
        write_file(&path, "version = 1\nhostname = \n");
        assert!(matches!(
            validate(&path),
            Err(Failure::Config(ConfigError::Syntax { line: Some(2), .. }))
        ));
        let missing = path.with_file_name("missing.toml");
        assert!(matches!(validate(&missing), Err(Failure::Io(_))));
    }
}
