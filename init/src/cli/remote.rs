//! `ros config …` against the running node, through the API.
//!
//! Owns: turning the config subcommands into API calls (`set`/`unset` as patches, `apply`/`edit`
//! as whole-layer replacements carrying their base generation, `--dry-run`, `--try`), `edit`'s
//! round trip through `$EDITOR` on a private temporary copy (kept, and named, when the node
//! refuses the result), and printing replies: the plan, the generation, a pending trial; or JSON.
//! Must not: edit config itself (the daemon does) or print errors (the caller prints `Failure`).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::client::{self, Conn, Failure};
use super::config_file::{self, ConfigArgs, ConfigCommand};
use super::table::{self, Output};
use crate::api::proto;

fn change_options(args: &ConfigArgs) -> Option<proto::ChangeOptions> {
    Some(proto::ChangeOptions {
        dry_run: args.dry_run,
        try_ms: args
            .try_for
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    })
}

/// The human text of a change reply.
pub fn change_text(r: &proto::ChangeReply) -> String {
    let mut out = Vec::new();
    if r.dry_run {
        if r.plan.is_empty() {
            out.push("no change".to_string());
        } else {
            out.extend(r.plan.iter().cloned());
        }
        out.push(format!(
            "(dry run: nothing written; generation {} is current)",
            r.generation
        ));
        return out.join("\n");
    }
    if !r.created {
        return format!("no change (generation {} is current)", r.generation);
    }
    if r.plan.is_empty() {
        out.push("no change to the effective config".to_string());
    } else {
        out.extend(r.plan.iter().cloned());
    }
    for line in &r.changed {
        if !r.plan.contains(line) {
            out.push(format!("  {line}"));
        }
    }
    out.push(format!(
        "generation {} is current (was {})",
        r.generation, r.previous
    ));
    if r.try_deadline_unix_ms > 0 {
        let left = r
            .try_deadline_unix_ms
            .saturating_sub(crate::config::generations::now_unix_ms())
            .div_ceil(1000);
        out.push(format!(
            "on trial: reverts at {} UTC (in {left}s) unless `ros config confirm` arrives",
            table::time(r.try_deadline_unix_ms)
        ));
    }
    out.join("\n")
}

fn print_change(r: &proto::ChangeReply, output: Output) {
    match output {
        Output::Table => println!("{}", change_text(r)),
        Output::Json => println!("{}", table::json(r)),
    }
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::Local(format!("{}: {e}", path.display())))
}

/// Prefixes a refusal with the file it was about.
fn about(path: &Path, e: Failure) -> Failure {
    match e {
        Failure::Refused { code, message } => Failure::Refused {
            code,
            message: format!("{}: {message}", path.display()),
        },
        other => other,
    }
}

/// Runs a `ros config` subcommand against the daemon at `socket`.
pub fn config(args: ConfigArgs, socket: &Path, output: Output) -> Result<(), Failure> {
    let opts = change_options(&args);
    match args.command {
        ConfigCommand::Get { key, local } => client::run(socket, |c| async move {
            let r = c
                .config()
                .get(proto::GetRequest {
                    key: key.unwrap_or_default(),
                    local,
                })
                .await?
                .into_inner();
            match output {
                Output::Table => println!("{}", r.value.trim_end()),
                Output::Json => println!("{}", table::json(&r)),
            }
            Ok(())
        }),
        ConfigCommand::Set { args } => {
            let assignments = config_file::split_assignments(&args)
                .map_err(Failure::Usage)?
                .into_iter()
                .map(|(key, value)| proto::Assignment { key, value })
                .collect();
            client::run(socket, |c| async move {
                let r = c
                    .config()
                    .set(proto::SetRequest {
                        assignments,
                        options: opts,
                    })
                    .await?
                    .into_inner();
                print_change(&r, output);
                Ok(())
            })
        }
        ConfigCommand::Unset { keys } => client::run(socket, |c| async move {
            let r = c
                .config()
                .unset(proto::UnsetRequest {
                    keys,
                    options: opts,
                })
                .await?
                .into_inner();
            print_change(&r, output);
            Ok(())
        }),
        ConfigCommand::Apply { path, base } => {
            let text = read(&path)?;
            let summary = format!("apply {}", path.display());
            client::run(socket, |c| async move {
                let r = c
                    .config()
                    .apply(proto::ApplyRequest {
                        toml: text,
                        base: base.unwrap_or(0),
                        check_base: base.is_some(),
                        options: opts,
                        summary,
                    })
                    .await
                    .map_err(|s| about(&path, s.into()))?
                    .into_inner();
                print_change(&r, output);
                Ok(())
            })
        }
        ConfigCommand::Validate { path } => client::run(socket, |c| async move {
            let (name, text) = match &path {
                Some(p) => (p.display().to_string(), read(p)?),
                None => {
                    let r = c
                        .config()
                        .export(proto::ExportRequest { local: true })
                        .await?
                        .into_inner();
                    (format!("generation {}", r.generation), r.toml)
                }
            };
            let r = c
                .config()
                .validate(proto::ValidateRequest { toml: text })
                .await
                .map_err(|s| about(Path::new(&name), s.into()))?
                .into_inner();
            match output {
                Output::Table => {
                    println!("{name}: valid");
                    for line in &r.plan {
                        println!("{line}");
                    }
                }
                Output::Json => println!("{}", table::json(&r)),
            }
            Ok(())
        }),
        ConfigCommand::Export { local } => client::run(socket, |c| async move {
            let r = c
                .config()
                .export(proto::ExportRequest { local })
                .await?
                .into_inner();
            match output {
                Output::Table => print!("{}", with_newline(&r.toml)),
                Output::Json => println!("{}", table::json(&r)),
            }
            Ok(())
        }),
        ConfigCommand::History => client::run(socket, |c| async move {
            let r = c
                .config()
                .history(proto::HistoryRequest {})
                .await?
                .into_inner();
            match output {
                Output::Table => print!("{}", history_table(&r)),
                Output::Json => println!("{}", table::json(&r)),
            }
            Ok(())
        }),
        ConfigCommand::Rollback { generation } => client::run(socket, |c| async move {
            let r = c
                .config()
                .rollback(proto::RollbackRequest {
                    generation: generation.unwrap_or(0),
                    options: opts,
                })
                .await?
                .into_inner();
            print_change(&r, output);
            Ok(())
        }),
        ConfigCommand::Confirm => client::run(socket, |c| async move {
            let r = c
                .config()
                .confirm(proto::ConfirmRequest {})
                .await?
                .into_inner();
            match output {
                Output::Table => println!("generation {} confirmed", r.generation),
                Output::Json => println!("{}", table::json(&r)),
            }
            Ok(())
        }),
        ConfigCommand::Edit => client::run(socket, |c| edit(c, opts, output)),
    }
}

fn with_newline(text: &str) -> String {
    if text.ends_with('\n') || text.is_empty() {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

/// The history as a table; the current generation is marked `*`.
pub fn history_table(r: &proto::HistoryReply) -> String {
    let rows: Vec<Vec<String>> = r
        .generations
        .iter()
        .map(|g| {
            vec![
                if g.current {
                    format!("{}*", g.number)
                } else {
                    g.number.to_string()
                },
                g.state.clone(),
                table::time(g.created_unix_ms),
                g.summary.clone(),
            ]
        })
        .collect();
    table::render(&["GEN", "STATE", "CREATED", "SUMMARY"], &rows)
}

/// A private (0600) temporary file for `edit`.
fn temp_copy(text: &str) -> Result<PathBuf, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    for i in 0..100u32 {
        let path = dir.join(format!("ros-config-{}-{i}.toml", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match file {
            Ok(mut f) => {
                f.write_all(text.as_bytes())
                    .map_err(|e| Failure::Local(format!("{}: {e}", path.display())))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Failure::Local(format!("{}: {e}", path.display()))),
        }
    }
    Err(Failure::Local(format!(
        "{}: cannot create a temporary file",
        dir.display()
    )))
}

/// `ros config edit`: the local layer in `$VISUAL`/`$EDITOR` (default `vi`), applied with its
/// base generation, so an edit that raced another change is refused rather than lost.
async fn edit(c: Conn, opts: Option<proto::ChangeOptions>, output: Output) -> Result<(), Failure> {
    let current = c
        .config()
        .export(proto::ExportRequest { local: true })
        .await?
        .into_inner();
    let path = temp_copy(&current.toml)?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".to_string());
    // Through the shell, so EDITOR may carry arguments ("code --wait").
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .map_err(|e| Failure::Local(format!("editor {editor:?}: {e}")))?;
    if !status.success() {
        return Err(Failure::Local(format!(
            "editor {editor:?} failed ({status}); your copy is {}",
            path.display()
        )));
    }
    let text = read(&path)?;
    if text == current.toml {
        let _ = std::fs::remove_file(&path);
        println!("no change (generation {} is current)", current.generation);
        return Ok(());
    }
    let reply = c
        .config()
        .apply(proto::ApplyRequest {
            toml: text,
            base: current.generation,
            check_base: true,
            options: opts,
            summary: "edit".to_string(),
        })
        .await;
    match reply {
        Ok(r) => {
            let _ = std::fs::remove_file(&path);
            print_change(&r.into_inner(), output);
            Ok(())
        }
        Err(s) => Err(Failure::Refused {
            code: s.code(),
            message: format!("{}; your edit is kept in {}", s.message(), path.display()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_text_says_what_changed_and_what_is_current() {
        let r = proto::ChangeReply {
            generation: 5,
            previous: 4,
            plan: vec!["~ hostname: a -> b".into()],
            changed: vec!["~ hostname: a -> b".into(), "hostname set".into()],
            created: true,
            ..Default::default()
        };
        assert_eq!(
            change_text(&r),
            "~ hostname: a -> b\n  hostname set\ngeneration 5 is current (was 4)"
        );
        let dry = proto::ChangeReply {
            generation: 4,
            previous: 4,
            plan: vec!["+ workload web".into()],
            dry_run: true,
            ..Default::default()
        };
        assert_eq!(
            change_text(&dry),
            "+ workload web\n(dry run: nothing written; generation 4 is current)"
        );
        let same = proto::ChangeReply {
            generation: 4,
            previous: 4,
            ..Default::default()
        };
        assert_eq!(change_text(&same), "no change (generation 4 is current)");
    }

    #[test]
    fn history_marks_the_current_generation() {
        let r = proto::HistoryReply {
            generations: vec![
                proto::Generation {
                    number: 1,
                    state: "good".into(),
                    created_unix_ms: 0,
                    summary: "set hostname=a".into(),
                    current: false,
                },
                proto::Generation {
                    number: 2,
                    state: "trying".into(),
                    created_unix_ms: 0,
                    summary: "apply x.toml".into(),
                    current: true,
                },
            ],
            current: 2,
        };
        assert_eq!(
            history_table(&r),
            "GEN  STATE   CREATED  SUMMARY\n1    good    -        set hostname=a\n2*   trying  -        apply x.toml\n"
        );
    }
}
