//! The config change engine behind `ros config …`: every change goes validate → new generation →
//! reconcile → mark, one at a time.
//!
//! Owns: the one change lock (a tokio mutex around the generations store, the effective config
//! the node runs, and the pending `--try`), the rules of DESIGN.md's "Concurrency" (patches —
//! `set`, `unset` — apply on top of whatever generation is current when their turn comes, so
//! they are never stale and never lost; whole-layer replacements — `apply`, `edit` — carry the
//! generation they started from and are refused when it is no longer current), the plan each
//! change prints, `--dry-run`, `--try` with its timer and `confirm`, rollback as a new
//! generation, and the generation states: `trying` while applied but unconfirmed, `good` after a
//! successful reconcile (or a confirm), `bad` when reconcile fails (the previous generation is
//! made current and reconciled back) or a try runs out (reverted as a new generation).
//! Nothing is written when validation fails; the error names the key.
//! Must not: touch the kernel, network or containers itself (the `Node` does), or know about
//! gRPC (the server maps `ChangeError` to a status).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::node::{Node, NodeError};
use crate::config::edit::{self, NEW_FILE};
use crate::config::generations::{now_unix_ms, GenState, Generation, Store, StoreError};
use crate::config::{keypath, Config, ConfigError, Document, KeyPathError, Layer, Plan};

/// The source name of the local layer in error messages.
pub const LOCAL: &str = "local";

/// One change to the local layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `set KEY VALUE…`: key/value pairs as typed (values are TOML literals, else strings).
    Set(Vec<(String, String)>),
    /// `unset KEY…`.
    Unset(Vec<String>),
    /// `apply`/`edit`: the whole local layer; `base` is the generation it started from (checked
    /// when given); `summary` is what the history shows.
    Replace {
        /// The new local layer.
        text: String,
        /// The generation the text was started from.
        base: Option<u64>,
        /// `apply FILE`, `edit`, …
        summary: String,
    },
    /// `rollback [N]`: generation N's text (0: the newest good one before the current), as a
    /// new generation.
    Rollback(u64),
}

/// How to make a change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Plan only.
    pub dry_run: bool,
    /// Revert unless confirmed within this time.
    pub try_for: Option<Duration>,
}

/// What a change did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The generation current now.
    pub generation: u64,
    /// The generation current before.
    pub previous: u64,
    /// The plan, one line per item.
    pub plan: Vec<String>,
    /// What the node did, one line per item.
    pub changed: Vec<String>,
    /// Nothing was written.
    pub dry_run: bool,
    /// A new generation was written.
    pub created: bool,
    /// When the change reverts unless confirmed (Unix ms); 0 without `--try`.
    pub try_deadline_unix_ms: u64,
}

/// Why a change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The new config is invalid (the key, line and reason are in the error); nothing written.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A key as typed cannot be parsed.
    #[error("invalid key {key:?}: {source}")]
    KeyPath {
        /// The key as typed.
        key: String,
        /// Why.
        source: KeyPathError,
    },
    /// `apply`/`edit` started from a generation that is no longer current.
    #[error("stale: the change was made on generation {base}, but generation {current} is current now; start again from `ros config export --local`")]
    Stale {
        /// The generation the change started from.
        base: u64,
        /// The current one.
        current: u64,
    },
    /// A `--try` change awaits confirmation.
    #[error("generation {generation} is on trial: it reverts in {remaining_s}s unless `ros config confirm` arrives; confirm it or let it revert first")]
    TrialPending {
        /// The generation on trial.
        generation: u64,
        /// Seconds left.
        remaining_s: u64,
    },
    /// `confirm` with no `--try` pending.
    #[error("nothing to confirm: no --try change is pending")]
    NothingToConfirm,
    /// `rollback N` of a generation that does not exist.
    #[error("config generation {number} does not exist")]
    NoSuchGeneration {
        /// The number asked for.
        number: u64,
    },
    /// `rollback` with nothing older to go back to.
    #[error("no good generation older than generation {current} to roll back to")]
    NothingToRollBack {
        /// The current generation.
        current: u64,
    },
    /// Writing the generation failed; nothing changed on the node.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node could not apply the new generation; it is marked bad and `restored` is current
    /// (and reconciled back) again.
    #[error(
        "applying generation {generation} failed: {source}; generation {restored} is current again"
    )]
    Reconcile {
        /// The generation that failed.
        generation: u64,
        /// The generation current again (0: no local layer).
        restored: u64,
        /// What failed.
        source: NodeError,
    },
}

/// A `--try` change awaiting `confirm`.
struct Trial {
    generation: u64,
    /// The text and effective config to go back to.
    previous_text: String,
    previous_effective: Config,
    deadline: tokio::time::Instant,
    deadline_unix_ms: u64,
    timer: JoinHandle<()>,
}

struct Inner {
    store: Store,
    /// The effective config of the current generation: what the node runs.
    effective: Config,
    trial: Option<Trial>,
}

/// The change engine. Create it with [`Engine::new`] inside the API's tokio runtime.
pub struct Engine {
    node: Arc<dyn Node>,
    inner: Mutex<Inner>,
    me: Weak<Engine>,
}

/// The history line of a `set`: values of secrets are not recorded.
fn set_summary(pairs: &[(String, String)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            if k.ends_with("password") {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    format!("set {}", items.join(" "))
}

fn parse_key(key: &str) -> Result<Vec<String>, ChangeError> {
    keypath::parse_key(key).map_err(|source| ChangeError::KeyPath {
        key: key.to_string(),
        source,
    })
}

impl Engine {
    /// Takes over the store at the node's start (after boot reached `ready` with the store's
    /// boot generation, which is therefore marked good). `effective` is the config the node
    /// booted with. Must be called inside a tokio runtime (the `--try` timers are its tasks).
    pub fn new(
        mut store: Store,
        node: Arc<dyn Node>,
        effective: Config,
    ) -> Result<Arc<Engine>, StoreError> {
        let boot = store.boot_generation().map(|g| (g.number, g.meta.state));
        match boot {
            Some((number, state)) => {
                if store.current_number() != number {
                    store.set_current(number)?;
                }
                if state == GenState::Trying {
                    store.set_state(number, GenState::Good)?;
                }
            }
            // Only bad generations: the node booted without a local layer.
            None if store.current().is_some() => store.clear_current()?,
            None => {}
        }
        Ok(Arc::new_cyclic(|me| Engine {
            node,
            inner: Mutex::new(Inner {
                store,
                effective,
                trial: None,
            }),
            me: me.clone(),
        }))
    }

    /// The node this engine reconciles.
    pub fn node(&self) -> &Arc<dyn Node> {
        &self.node
    }

    /// The current generation's number and the effective config the node runs.
    pub async fn effective(&self) -> (u64, Config) {
        let inner = self.inner.lock().await;
        (inner.store.current_number(), inner.effective.clone())
    }

    /// The current generation's number and local layer text (`version = 1` when there is none).
    pub async fn local(&self) -> (u64, String) {
        let inner = self.inner.lock().await;
        (
            inner.store.current_number(),
            inner.store.current_text().unwrap_or(NEW_FILE).to_string(),
        )
    }

    /// Every generation, oldest first, and the current number.
    pub async fn history(&self) -> (Vec<Generation>, u64) {
        let inner = self.inner.lock().await;
        (
            inner.store.list().cloned().collect(),
            inner.store.current_number(),
        )
    }

    /// The pending `--try`, if any: (generation, deadline in Unix ms).
    pub async fn trial(&self) -> Option<(u64, u64)> {
        let inner = self.inner.lock().await;
        inner
            .trial
            .as_ref()
            .map(|t| (t.generation, t.deadline_unix_ms))
    }

    /// Checks a candidate local layer against the node's other layers and plans it; changes
    /// nothing.
    pub async fn validate(&self, text: &str) -> Result<Outcome, ChangeError> {
        let layer = Layer::parse(LOCAL, text)?;
        let new = self.node.effective(Some(&layer))?;
        let inner = self.inner.lock().await;
        let current = inner.store.current_number();
        Ok(Outcome {
            generation: current,
            previous: current,
            plan: Plan::between(&inner.effective, &new).lines(),
            dry_run: true,
            ..Outcome::default()
        })
    }

    /// The new local layer text of `edit` on top of the current generation, and its summary.
    fn text_of(inner: &Inner, edit: &Edit) -> Result<(String, String), ChangeError> {
        let current = inner.store.current_number();
        let doc = || match inner.store.current_text() {
            Some(text) => Document::parse(LOCAL, text),
            None => Ok(Document::new_layer(LOCAL)),
        };
        match edit {
            Edit::Set(pairs) => {
                let mut edits = Vec::new();
                for (key, value) in pairs {
                    edits.push((parse_key(key)?, keypath::parse_edit_value(value)));
                }
                let mut doc = doc()?;
                doc.set_all(&edits)?;
                Ok((doc.text(), set_summary(pairs)))
            }
            Edit::Unset(keys) => {
                let mut doc = doc()?;
                for key in keys {
                    doc.unset(&parse_key(key)?)?;
                }
                Ok((doc.text(), format!("unset {}", keys.join(" "))))
            }
            Edit::Replace {
                text,
                base,
                summary,
            } => match base {
                Some(base) if *base != current => Err(ChangeError::Stale {
                    base: *base,
                    current,
                }),
                _ => Ok((text.clone(), summary.clone())),
            },
            Edit::Rollback(number) => {
                let target = if *number == 0 {
                    inner
                        .store
                        .previous_good(current)
                        .ok_or(ChangeError::NothingToRollBack { current })?
                } else {
                    inner
                        .store
                        .get(*number)
                        .ok_or(ChangeError::NoSuchGeneration { number: *number })?
                };
                Ok((
                    target.text.clone(),
                    format!("rollback to generation {}", target.number),
                ))
            }
        }
    }

    /// Makes one change: validate, plan, (unless a dry run) write a new generation, reconcile,
    /// mark it. Concurrent callers queue on the change lock (first come, first served). Not
    /// cancellation-safe: a caller that may be dropped midway (a gRPC handler whose client goes
    /// away) runs it in its own task, as the server does.
    pub async fn change(&self, edit: Edit, options: Options) -> Result<Outcome, ChangeError> {
        let mut inner = self.inner.lock().await;
        if !options.dry_run {
            if let Some(t) = &inner.trial {
                let left = t
                    .deadline
                    .saturating_duration_since(tokio::time::Instant::now());
                return Err(ChangeError::TrialPending {
                    generation: t.generation,
                    remaining_s: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                });
            }
        }
        let previous = inner.store.current_number();
        let (text, summary) = Self::text_of(&inner, &edit)?;
        let layer = Layer::parse(LOCAL, &text)?;
        let new_effective = self.node.effective(Some(&layer))?;
        let plan = Plan::between(&inner.effective, &new_effective);
        let mut outcome = Outcome {
            generation: previous,
            previous,
            plan: plan.lines(),
            dry_run: options.dry_run,
            ..Outcome::default()
        };
        if options.dry_run || inner.store.current_text() == Some(text.as_str()) {
            return Ok(outcome);
        }
        let previous_text = inner.store.current_text().unwrap_or(NEW_FILE).to_string();
        let generation = inner.store.commit(&text, &summary, GenState::Trying)?;
        outcome.generation = generation;
        outcome.created = true;
        match self
            .node
            .reconcile(&inner.effective, &new_effective, &plan)
            .await
        {
            Ok(changed) => {
                outcome.changed = changed;
                let previous_effective = std::mem::replace(&mut inner.effective, new_effective);
                match options.try_for {
                    Some(after) => {
                        outcome.try_deadline_unix_ms = self.start_trial(
                            &mut inner,
                            generation,
                            previous_text,
                            previous_effective,
                            after,
                        );
                    }
                    // A storage change only takes effect at the next boot: the generation
                    // stays `trying` until a boot reaches `ready` with it (or rolls it back).
                    None if plan.storage => {}
                    None => inner.store.set_state(generation, GenState::Good)?,
                }
                Ok(outcome)
            }
            Err(source) => {
                self.restore(&mut inner, generation, previous, &new_effective)
                    .await;
                Err(ChangeError::Reconcile {
                    generation,
                    restored: previous,
                    source,
                })
            }
        }
    }

    /// After a failed reconcile of `failed`: mark it bad, make `previous` current again and
    /// reconcile the node back (best effort: logged).
    async fn restore(&self, inner: &mut Inner, failed: u64, previous: u64, tried: &Config) {
        if let Err(e) = inner.store.set_state(failed, GenState::Bad) {
            log::error!("{e}");
        }
        let back = if previous == 0 {
            inner.store.clear_current()
        } else {
            inner.store.set_current(previous)
        };
        if let Err(e) = back {
            log::error!("{e}");
        }
        let plan = Plan::between(tried, &inner.effective);
        if let Err(e) = self.node.reconcile(tried, &inner.effective, &plan).await {
            log::error!("config: reconciling generation {previous} back after generation {failed} failed: {e}");
        }
    }

    fn start_trial(
        &self,
        inner: &mut Inner,
        generation: u64,
        previous_text: String,
        previous_effective: Config,
        after: Duration,
    ) -> u64 {
        let deadline = tokio::time::Instant::now() + after;
        let deadline_unix_ms =
            now_unix_ms().saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        let me = self.me.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(engine) = me.upgrade() {
                engine.expire(generation).await;
            }
        });
        inner.trial = Some(Trial {
            generation,
            previous_text,
            previous_effective,
            deadline,
            deadline_unix_ms,
            timer,
        });
        deadline_unix_ms
    }

    /// A trial ran out: mark it bad and go back to the previous text as a new generation.
    async fn expire(&self, generation: u64) {
        let mut inner = self.inner.lock().await;
        let trial = match inner.trial.take() {
            Some(t) if t.generation == generation => t,
            other => {
                // Confirmed (or replaced) meanwhile.
                inner.trial = other;
                return;
            }
        };
        if let Err(e) = inner.store.set_state(generation, GenState::Bad) {
            log::error!("{e}");
        }
        let summary = format!("revert of generation {generation} (not confirmed in time)");
        let reverted = match inner
            .store
            .commit(&trial.previous_text, &summary, GenState::Trying)
        {
            Ok(n) => n,
            Err(e) => return log::error!("config: cannot revert generation {generation}: {e}"),
        };
        let plan = Plan::between(&inner.effective, &trial.previous_effective);
        let result = self
            .node
            .reconcile(&inner.effective, &trial.previous_effective, &plan)
            .await;
        inner.effective = trial.previous_effective;
        let state = match result {
            Ok(changed) => {
                log::warn!(
                    "config: generation {generation} was not confirmed in time; reverted as generation {reverted}: {}",
                    changed.join("; ")
                );
                GenState::Good
            }
            Err(e) => {
                log::error!("config: reverting generation {generation} as generation {reverted} failed: {e}");
                GenState::Bad
            }
        };
        if let Err(e) = inner.store.set_state(reverted, state) {
            log::error!("{e}");
        }
    }

    /// Keeps the generation on trial; returns its number.
    pub async fn confirm(&self) -> Result<u64, ChangeError> {
        let mut inner = self.inner.lock().await;
        let trial = inner.trial.take().ok_or(ChangeError::NothingToConfirm)?;
        trial.timer.abort();
        inner.store.set_state(trial.generation, GenState::Good)?;
        Ok(trial.generation)
    }
}

/// `ros config get KEY` on a table: the value rendered as the CLI prints it.
pub fn lookup(table: &toml::Table, key: &str) -> Result<Option<String>, ChangeError> {
    if key.is_empty() {
        return Ok(Some(toml::to_string(table).unwrap_or_default()));
    }
    let segs = parse_key(key)?;
    Ok(edit::lookup(table, &segs).map(edit::render))
}

/// A config as a TOML table (for `get` and `export`).
pub fn table_of(config: &Config) -> toml::Table {
    match toml::Value::try_from(config) {
        Ok(toml::Value::Table(t)) => t,
        Ok(_) | Err(_) => toml::Table::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::node::{LogQuery, LogStream, ServiceAction};
    use crate::api::proto;
    use crate::config::effective;
    use crate::power::PowerAction;
    use std::sync::Mutex as StdMutex;

    /// Records reconciles; fails those whose new hostname is "fail".
    #[derive(Default)]
    struct Fake {
        reconciled: StdMutex<Vec<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl Node for Fake {
        fn effective(&self, local: Option<&Layer>) -> Result<Config, ConfigError> {
            effective(local.map(std::slice::from_ref).unwrap_or(&[]))
        }
        async fn reconcile(
            &self,
            _old: &Config,
            new: &Config,
            plan: &Plan,
        ) -> Result<Vec<String>, NodeError> {
            self.reconciled.lock().unwrap().push(plan.lines());
            if new.hostname == "fail" {
                return Err(NodeError::Failed {
                    what: "hostname".into(),
                    reason: "refused".into(),
                });
            }
            Ok(plan.lines())
        }
        async fn services(&self) -> Result<Vec<proto::Container>, NodeError> {
            Ok(Vec::new())
        }
        async fn service(&self, name: &str, _: ServiceAction) -> Result<String, NodeError> {
            Err(NodeError::NotFound {
                kind: "service",
                name: name.into(),
            })
        }
        async fn ps(&self) -> Result<Vec<proto::Container>, NodeError> {
            Ok(Vec::new())
        }
        async fn logs(&self, _: LogQuery) -> Result<LogStream, NodeError> {
            Ok(Box::pin(futures::stream::empty()))
        }
        async fn status(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        async fn power(&self, _: PowerAction) -> Result<(), NodeError> {
            Ok(())
        }
    }

    fn engine(dir: &std::path::Path) -> (Arc<Engine>, Arc<Fake>) {
        let fake = Arc::new(Fake::default());
        let store = Store::open(dir).unwrap();
        let node: Arc<dyn Node> = fake.clone();
        let e = Engine::new(store, node, effective(&[]).unwrap()).unwrap();
        (e, fake)
    }

    fn set(k: &str, v: &str) -> Edit {
        Edit::Set(vec![(k.into(), v.into())])
    }

    #[tokio::test]
    async fn set_writes_a_good_generation_and_reconciles_only_the_plan() {
        let d = tempfile::tempdir().unwrap();
        let (e, fake) = engine(d.path());
        let o = e
            .change(set("hostname", "n2"), Options::default())
            .await
            .unwrap();
        assert_eq!((o.previous, o.generation, o.created), (0, 1, true));
        assert_eq!(o.plan, ["~ hostname: ros -> n2"]);
        assert_eq!(e.effective().await.1.hostname, "n2");
        let (h, cur) = e.history().await;
        assert_eq!(cur, 1);
        assert_eq!(h[0].meta.state, GenState::Good);
        assert_eq!(h[0].meta.summary, "set hostname=n2");
        assert_eq!(fake.reconciled.lock().unwrap().len(), 1);
        // The same value again: nothing new.
        let o = e
            .change(set("hostname", "n2"), Options::default())
            .await
            .unwrap();
        assert!(!o.created && o.plan.is_empty());
        assert_eq!(e.history().await.0.len(), 1);
    }

    #[tokio::test]
    async fn an_invalid_change_writes_nothing_and_names_the_key() {
        let d = tempfile::tempdir().unwrap();
        let (e, fake) = engine(d.path());
        let err = e
            .change(
                set("network.interfaces.eth1.mtu", "big"),
                Options::default(),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("network.interfaces.eth1.mtu (line"),
            "{err}"
        );
        let err = e
            .change(
                set("workloads.w.depends_on", "[\"db\"]"),
                Options::default(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("workloads.w."), "{err}");
        assert!(e.history().await.0.is_empty());
        assert!(fake.reconciled.lock().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn dry_run_plans_and_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (e, _) = engine(d.path());
        let o = e
            .change(
                set("workloads.web.image", "nginx"),
                Options {
                    dry_run: true,
                    try_for: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(o.plan, ["+ workload web"]);
        assert!(o.dry_run && !o.created);
        assert!(e.history().await.0.is_empty());
    }

    #[tokio::test]
    async fn a_stale_apply_is_refused_naming_the_current_generation() {
        let d = tempfile::tempdir().unwrap();
        let (e, _) = engine(d.path());
        e.change(set("hostname", "a"), Options::default())
            .await
            .unwrap();
        e.change(set("hostname", "b"), Options::default())
            .await
            .unwrap();
        let replace = |base| Edit::Replace {
            text: "version = 1\nhostname = \"c\"\n".into(),
            base: Some(base),
            summary: "apply".into(),
        };
        let err = e.change(replace(1), Options::default()).await.unwrap_err();
        assert_eq!(err.to_string(), "stale: the change was made on generation 1, but generation 2 is current now; start again from `ros config export --local`");
        let o = e.change(replace(2), Options::default()).await.unwrap();
        assert_eq!(o.generation, 3);
    }

    #[tokio::test]
    async fn rollback_makes_a_new_generation_with_the_old_text() {
        let d = tempfile::tempdir().unwrap();
        let (e, _) = engine(d.path());
        let err = e
            .change(Edit::Rollback(0), Options::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::NothingToRollBack { current: 0 }));
        e.change(set("hostname", "a"), Options::default())
            .await
            .unwrap();
        e.change(set("hostname", "b"), Options::default())
            .await
            .unwrap();
        let o = e
            .change(Edit::Rollback(0), Options::default())
            .await
            .unwrap();
        assert_eq!((o.previous, o.generation), (2, 3));
        assert_eq!(o.plan, ["~ hostname: b -> a"]);
        assert_eq!(e.effective().await.1.hostname, "a");
        let (h, _) = e.history().await;
        assert_eq!(h[2].meta.summary, "rollback to generation 1");
        let err = e
            .change(Edit::Rollback(9), Options::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::NoSuchGeneration { number: 9 }));
    }

    #[tokio::test]
    async fn a_failed_reconcile_marks_bad_and_restores_the_previous_generation() {
        let d = tempfile::tempdir().unwrap();
        let (e, fake) = engine(d.path());
        e.change(set("hostname", "a"), Options::default())
            .await
            .unwrap();
        let err = e
            .change(set("hostname", "fail"), Options::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "applying generation 2 failed: hostname: refused; generation 1 is current again"
        );
        let (h, cur) = e.history().await;
        assert_eq!(cur, 1);
        assert_eq!(h[1].meta.state, GenState::Bad);
        assert_eq!(e.effective().await.1.hostname, "a");
        // Reconciled forward, then back.
        assert_eq!(
            fake.reconciled.lock().unwrap().last().cloned(),
            Some(vec!["~ hostname: fail -> a".to_string()])
        );
        // The next change starts from generation 1 and takes number 3.
        let o = e
            .change(set("sysctl.vm.swappiness", "10"), Options::default())
            .await
            .unwrap();
        assert_eq!((o.previous, o.generation), (1, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_reverts_by_itself_unless_confirmed() {
        let d = tempfile::tempdir().unwrap();
        let (e, _) = engine(d.path());
        e.change(set("hostname", "a"), Options::default())
            .await
            .unwrap();
        let tried = Options {
            dry_run: false,
            try_for: Some(Duration::from_secs(20)),
        };
        let o = e.change(set("hostname", "b"), tried).await.unwrap();
        assert!(o.try_deadline_unix_ms > 0);
        assert_eq!(e.trial().await.map(|t| t.0), Some(2));
        let err = e
            .change(set("hostname", "c"), Options::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("generation 2 is on trial: it reverts in 20s"),
            "{err}"
        );
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert_eq!(e.trial().await, None);
        let (h, cur) = e.history().await;
        assert_eq!(cur, 3);
        assert_eq!(h[1].meta.state, GenState::Bad);
        assert_eq!(h[2].meta.state, GenState::Good);
        assert_eq!(h[2].text, h[0].text);
        assert_eq!(e.effective().await.1.hostname, "a");
        assert!(matches!(
            e.confirm().await,
            Err(ChangeError::NothingToConfirm)
        ));

        // Confirmed in time: kept.
        e.change(set("hostname", "d"), tried).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(e.confirm().await.unwrap(), 4);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (h, cur) = e.history().await;
        assert_eq!(cur, 4);
        assert_eq!(h[3].meta.state, GenState::Good);
        assert_eq!(e.effective().await.1.hostname, "d");
    }

    #[tokio::test]
    async fn twenty_concurrent_sets_all_land() {
        let d = tempfile::tempdir().unwrap();
        let (e, _) = engine(d.path());
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let e = Arc::clone(&e);
                tokio::spawn(async move {
                    e.change(
                        set(&format!("sysctl.net.ros.k{i}"), &i.to_string()),
                        Options::default(),
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let c = e.effective().await.1;
        for i in 0..20 {
            assert_eq!(c.sysctl[&format!("net.ros.k{i}")], i.to_string());
        }
        assert_eq!(e.history().await.1, 20);
    }

    #[tokio::test]
    async fn a_bad_boot_generation_is_skipped_and_a_trying_one_marked_good() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(d.path()).unwrap();
            s.commit("version = 1\nhostname = \"a\"\n", "one", GenState::Good)
                .unwrap();
            s.commit("version = 1\nhostname = \"b\"\n", "two", GenState::Trying)
                .unwrap();
        }
        let (e, _) = engine(d.path());
        let (h, cur) = e.history().await;
        assert_eq!((cur, h[1].meta.state), (2, GenState::Good));
        {
            let mut s = Store::open(d.path()).unwrap();
            s.set_state(2, GenState::Bad).unwrap();
        }
        let (e, _) = engine(d.path());
        assert_eq!(e.history().await.1, 1);
        {
            let mut s = Store::open(d.path()).unwrap();
            s.set_state(1, GenState::Bad).unwrap();
        }
        let (e, _) = engine(d.path());
        assert_eq!(e.history().await.1, 0);
        assert_eq!(e.local().await, (0, NEW_FILE.to_string()));
    }

    #[test]
    fn secrets_are_not_recorded_in_the_history() {
        assert_eq!(
            set_summary(&[
                ("hostname".into(), "a".into()),
                ("registries.r.password".into(), "hunter2".into())
            ]),
            "set hostname=a registries.r.password=***"
        );
    }
}
