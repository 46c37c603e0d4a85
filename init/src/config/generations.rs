//! The local config layer as numbered generations on disk (DESIGN.md, "Config", generations).
//!
//! Format, in one directory (`/var/lib/ros/config`: on the state disk, or in RAM without one):
//! `gen-N.toml` is the local layer of generation N, byte for byte what the admin's edits made;
//! `gen-N.state` is its metadata as JSON (`{"state":"good","created_unix_ms":…,"summary":"…"}`);
//! `current` holds the number of the current generation. Every file is written through
//! `edit::write_atomic` (temporary file, fsync, rename, fsync of the directory), and a new
//! generation is complete — text, then metadata — before `current` is flipped to it, so a crash
//! leaves either the old or the new generation current, never a mix.
//!
//! Opening tolerates what a crash leaves: temporary files are removed, a generation without (or
//! with a garbled) metadata file counts as `trying`, and a missing or garbled `current` (or one
//! naming a missing generation) falls back to the newest `good` generation, then the newest one
//! not `bad`. Numbers are never reused: the next is one past the highest seen on disk.
//!
//! `booting` names the `trying` generation a boot is attempting (written before it can hang):
//! if the next boot finds that generation still `trying`, it never reached `ready` and is
//! marked `bad` ([`Store::roll_back_failed_boot`]).
//!
//! Owns: the files, the numbering, the states (`trying` → `good` | `bad`) and the pointer.
//! Must not: parse or validate TOML, reconcile, or lock: the caller (the API server) serialises
//! writers by owning the `Store` behind one lock; that is what makes concurrent patches safe.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::edit::write_atomic;
use super::load::{LayerBody, LayerInput};

/// Where the generations live on a node.
pub const DIR: &str = "/var/lib/ros/config";
/// The pointer file's name.
const CURRENT: &str = "current";
/// The generation the running (or last) boot tried while it was `trying`.
const BOOTING: &str = "booting";

/// Where a generation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenState {
    /// Written; the node has not yet applied it (or a `--try` awaits confirmation).
    Trying,
    /// Applied live, or the node reached `ready` with it.
    Good,
    /// Applying it failed, or a `--try` of it was not confirmed in time.
    Bad,
}

impl GenState {
    /// `trying`, `good` or `bad`.
    pub fn as_str(self) -> &'static str {
        match self {
            GenState::Trying => "trying",
            GenState::Good => "good",
            GenState::Bad => "bad",
        }
    }
}

/// The metadata of one generation (`gen-N.state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Where it stands.
    pub state: GenState,
    /// When it was written, Unix milliseconds.
    pub created_unix_ms: u64,
    /// What made it (`set hostname=node-2`, `rollback to 3`, …).
    pub summary: String,
}

/// One generation: its number, text and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// 1, 2, … (0 is "no local layer" and never stored).
    pub number: u64,
    /// The local layer, TOML.
    pub text: String,
    /// State, time, summary.
    pub meta: Meta,
}

/// A failure of the store; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file of the store failed.
    #[error("config generations: {op} {path}: {source}")]
    Io {
        /// What was being done (`write`, `read`, `create`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A generation number that is not in the store.
    #[error("config generation {number} does not exist")]
    NoSuchGeneration {
        /// The number asked for.
        number: u64,
    },
}

/// The generations of one directory, loaded.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    gens: BTreeMap<u64, Generation>,
    current: Option<u64>,
    highest_seen: u64,
    warnings: Vec<String>,
}

/// Now, in Unix milliseconds.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `gen-N.toml` → N, `gen-N.state` → N.
fn number_of(name: &str, ext: &str) -> Option<u64> {
    name.strip_prefix("gen-")?
        .strip_suffix(ext)?
        .parse()
        .ok()
        .filter(|n| *n > 0)
}

impl Store {
    /// Opens (creating it, mode 0700) the store in `dir` and loads every generation.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { op, path, source }
        };
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io("chmod", dir))?;
        }
        let mut texts = BTreeMap::new();
        let mut metas = BTreeMap::new();
        let mut pointer = None;
        let mut warnings = Vec::new();
        let mut highest_seen = 0;
        for entry in fs::read_dir(dir).map_err(io("read", dir))? {
            let entry = entry.map_err(io("read", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write that never reached its rename: by construction not acknowledged.
                let _ = fs::remove_file(&path);
                warnings.push(format!(
                    "removed the torn temporary file {}",
                    path.display()
                ));
            } else if let Some(n) = number_of(&name, ".toml") {
                highest_seen = highest_seen.max(n);
                texts.insert(n, fs::read_to_string(&path).map_err(io("read", &path))?);
            } else if let Some(n) = number_of(&name, ".state") {
                highest_seen = highest_seen.max(n);
                let text = fs::read_to_string(&path).unwrap_or_default();
                match serde_json::from_str::<Meta>(&text) {
                    Ok(meta) => {
                        metas.insert(n, meta);
                    }
                    Err(e) => warnings.push(format!("{}: {e}; taken as trying", path.display())),
                }
            } else if name == CURRENT {
                pointer = Some(fs::read_to_string(&path).unwrap_or_default());
            }
        }
        let gens: BTreeMap<u64, Generation> = texts
            .into_iter()
            .map(|(number, text)| {
                let meta = metas.remove(&number).unwrap_or(Meta {
                    state: GenState::Trying,
                    created_unix_ms: 0,
                    summary: String::new(),
                });
                (number, Generation { number, text, meta })
            })
            .collect();
        let mut store = Store {
            dir: dir.to_path_buf(),
            gens,
            current: None,
            highest_seen,
            warnings,
        };
        let named = pointer
            .as_deref()
            .and_then(|p| p.trim().parse::<u64>().ok());
        store.current = match named {
            // Written by `clear_current`: no local layer on purpose.
            Some(0) => None,
            Some(n) if store.gens.contains_key(&n) => Some(n),
            _ => {
                let fallback = store
                    .newest(|m| m.state == GenState::Good)
                    .or_else(|| store.newest(|m| m.state != GenState::Bad));
                if pointer.is_some() || fallback.is_some() {
                    store.warnings.push(format!(
                        "{}: {}; using generation {}",
                        dir.join(CURRENT).display(),
                        match (&pointer, named) {
                            (None, _) => "missing".to_string(),
                            (Some(_), None) => "garbled".to_string(),
                            (Some(_), Some(n)) => format!("names generation {n}, which is gone"),
                        },
                        fallback.map_or("none (no local layer)".to_string(), |n| n.to_string())
                    ));
                }
                fallback
            }
        };
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What `open` had to repair or skip, one line each (for the log).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn newest(&self, pred: impl Fn(&Meta) -> bool) -> Option<u64> {
        self.gens
            .values()
            .rev()
            .find(|g| pred(&g.meta))
            .map(|g| g.number)
    }

    /// The current generation, if there is a local layer at all.
    pub fn current(&self) -> Option<&Generation> {
        self.current.and_then(|n| self.gens.get(&n))
    }

    /// The current generation's number; 0 when there is none.
    pub fn current_number(&self) -> u64 {
        self.current.unwrap_or(0)
    }

    /// The current local layer's text, if any.
    pub fn current_text(&self) -> Option<&str> {
        self.current().map(|g| g.text.as_str())
    }

    /// Generation `number`.
    pub fn get(&self, number: u64) -> Option<&Generation> {
        self.gens.get(&number)
    }

    /// Every generation, oldest first.
    pub fn list(&self) -> impl Iterator<Item = &Generation> {
        self.gens.values()
    }

    /// The newest `good` generation older than `before`.
    pub fn previous_good(&self, before: u64) -> Option<&Generation> {
        self.gens
            .range(..before)
            .rev()
            .map(|(_, g)| g)
            .find(|g| g.meta.state == GenState::Good)
    }

    /// The generation boot should use as the local layer: the current one unless it is `bad`,
    /// else the newest `good` one.
    pub fn boot_generation(&self) -> Option<&Generation> {
        match self.current() {
            Some(g) if g.meta.state != GenState::Bad => Some(g),
            _ => self
                .newest(|m| m.state == GenState::Good)
                .and_then(|n| self.gens.get(&n)),
        }
    }

    /// The local layer for boot ([`Store::boot_generation`]), named by its file, to go between
    /// the provisioned layers and the cmdline in `config::load`.
    pub fn boot_layer(&self) -> Option<LayerInput> {
        self.boot_generation().map(|g| LayerInput {
            source: self
                .path(&format!("gen-{}.toml", g.number))
                .display()
                .to_string(),
            body: LayerBody::Text(g.text.clone()),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, text: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        write_atomic(&path, text).map_err(|source| StoreError::Io {
            op: "write",
            path,
            source,
        })
    }

    fn write_meta(&self, number: u64, meta: &Meta) -> Result<(), StoreError> {
        let json = serde_json::to_string(meta).map_err(|e| StoreError::Io {
            op: "encode",
            path: self.path(&format!("gen-{number}.state")),
            source: std::io::Error::other(e),
        })?;
        self.write(&format!("gen-{number}.state"), &format!("{json}\n"))
    }

    /// Writes `text` as a new generation in `state` and makes it current. Returns its number.
    pub fn commit(
        &mut self,
        text: &str,
        summary: &str,
        state: GenState,
    ) -> Result<u64, StoreError> {
        let number = self.highest_seen + 1;
        let meta = Meta {
            state,
            created_unix_ms: now_unix_ms(),
            summary: summary.to_string(),
        };
        // Claim the number first, so a failed write is never retried onto the same name.
        self.highest_seen = number;
        self.write(&format!("gen-{number}.toml"), text)?;
        self.write_meta(number, &meta)?;
        self.write(CURRENT, &format!("{number}\n"))?;
        self.gens.insert(
            number,
            Generation {
                number,
                text: text.to_string(),
                meta,
            },
        );
        self.current = Some(number);
        Ok(number)
    }

    /// Makes no generation current (no local layer): used when the first generation failed.
    pub fn clear_current(&mut self) -> Result<(), StoreError> {
        self.write(CURRENT, "0\n")?;
        self.current = None;
        Ok(())
    }

    /// Records a generation's new state.
    pub fn set_state(&mut self, number: u64, state: GenState) -> Result<(), StoreError> {
        let Some(gen) = self.gens.get(&number) else {
            return Err(StoreError::NoSuchGeneration { number });
        };
        let mut meta = gen.meta.clone();
        meta.state = state;
        self.write_meta(number, &meta)?;
        if let Some(gen) = self.gens.get_mut(&number) {
            gen.meta = meta;
        }
        Ok(())
    }

    /// The boot state machine (DESIGN.md "Config"), run once at boot with the state on disk:
    /// when the generation the previous boot was trying (the `booting` file) is still
    /// `trying`, that boot never reached `ready`: the generation is marked `bad` and the newest
    /// `good` one made current (none: no local layer). Returns (failed, now current).
    pub fn roll_back_failed_boot(&mut self) -> Result<Option<(u64, Option<u64>)>, StoreError> {
        let marker = fs::read_to_string(self.path(BOOTING)).unwrap_or_default();
        let Ok(failed) = marker.trim().parse::<u64>() else {
            return Ok(None);
        };
        if self.gens.get(&failed).map(|g| g.meta.state) != Some(GenState::Trying) {
            return Ok(None);
        }
        self.set_state(failed, GenState::Bad)?;
        let fallback = self.newest(|m| m.state == GenState::Good);
        match fallback {
            Some(n) => self.set_current(n)?,
            None => self.clear_current()?,
        }
        Ok(Some((failed, fallback)))
    }

    /// Records that this boot tries generation `number` (before anything can hang), so the
    /// next boot knows if it never reached `ready`.
    pub fn mark_booting(&self, number: u64) -> Result<(), StoreError> {
        self.write(BOOTING, &format!("{number}\n"))
    }

    /// Points `current` at an existing generation (used to fall back to the previous one when
    /// applying a new one failed).
    pub fn set_current(&mut self, number: u64) -> Result<(), StoreError> {
        if !self.gens.contains_key(&number) {
            return Err(StoreError::NoSuchGeneration { number });
        }
        self.write(CURRENT, &format!("{number}\n"))?;
        self.current = Some(number);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{keypath, Document};
    use std::sync::{Arc, Mutex};

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir).unwrap()
    }

    #[test]
    fn a_new_store_is_empty_and_commits_number_from_one() {
        let d = tmp();
        let mut s = open(d.path());
        assert_eq!(s.current_number(), 0);
        assert!(s.current().is_none());
        assert!(s.warnings().is_empty());
        assert_eq!(
            s.commit("version = 1\n", "first", GenState::Trying)
                .unwrap(),
            1
        );
        assert_eq!(
            s.commit("version = 1\nhostname = \"b\"\n", "second", GenState::Good)
                .unwrap(),
            2
        );
        assert_eq!(s.current_number(), 2);
        assert_eq!(s.current_text(), Some("version = 1\nhostname = \"b\"\n"));
        let mut names: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "current",
                "gen-1.state",
                "gen-1.toml",
                "gen-2.state",
                "gen-2.toml"
            ]
        );
        assert_eq!(fs::read_to_string(d.path().join("current")).unwrap(), "2\n");
        let meta: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(d.path().join("gen-2.state")).unwrap())
                .unwrap();
        assert_eq!(meta["state"], "good");
        assert_eq!(meta["summary"], "second");
    }

    #[test]
    fn reopening_gives_back_every_generation_and_state() {
        let d = tmp();
        {
            let mut s = open(d.path());
            s.commit("a = 1\n", "one", GenState::Trying).unwrap();
            s.set_state(1, GenState::Good).unwrap();
            s.commit("a = 2\n", "two", GenState::Trying).unwrap();
            s.set_state(2, GenState::Bad).unwrap();
            s.set_current(1).unwrap();
        }
        let s = open(d.path());
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
        assert_eq!(s.current_number(), 1);
        let states: Vec<_> = s.list().map(|g| (g.number, g.meta.state)).collect();
        assert_eq!(states, [(1, GenState::Good), (2, GenState::Bad)]);
        assert_eq!(s.get(2).map(|g| g.meta.summary.as_str()), Some("two"));
    }

    #[test]
    fn a_torn_temporary_file_is_ignored_and_removed() {
        let d = tmp();
        {
            let mut s = open(d.path());
            s.commit("a = 1\n", "one", GenState::Good).unwrap();
        }
        // A crash between writing the temporary file of generation 2 and its rename.
        fs::write(d.path().join(".gen-2.toml.4242.tmp"), "a = 2\nhalf").unwrap();
        fs::write(d.path().join(".current.4242.tmp"), "2").unwrap();
        let mut s = open(d.path());
        assert_eq!(s.current_number(), 1);
        assert_eq!(s.current_text(), Some("a = 1\n"));
        assert_eq!(s.list().count(), 1);
        assert_eq!(s.warnings().len(), 2, "{:?}", s.warnings());
        assert!(!d.path().join(".gen-2.toml.4242.tmp").exists());
        assert_eq!(s.commit("a = 3\n", "three", GenState::Good).unwrap(), 2);
    }

    #[test]
    fn a_generation_written_but_not_made_current_is_kept_but_not_used_and_not_reused() {
        let d = tmp();
        {
            let mut s = open(d.path());
            s.commit("a = 1\n", "one", GenState::Good).unwrap();
        }
        // A crash after gen-2.toml reached the disk, before its state file and the pointer.
        fs::write(d.path().join("gen-2.toml"), "a = 2\n").unwrap();
        let mut s = open(d.path());
        assert_eq!(s.current_number(), 1);
        assert_eq!(s.get(2).map(|g| g.meta.state), Some(GenState::Trying));
        assert_eq!(s.commit("a = 3\n", "three", GenState::Good).unwrap(), 3);
    }

    #[test]
    fn a_missing_or_garbled_pointer_falls_back_to_the_newest_good_generation() {
        let d = tmp();
        {
            let mut s = open(d.path());
            s.commit("a = 1\n", "one", GenState::Good).unwrap();
            s.commit("a = 2\n", "two", GenState::Good).unwrap();
            s.commit("a = 3\n", "three", GenState::Bad).unwrap();
        }
        fs::write(d.path().join("current"), "th\0ree").unwrap();
        let s = open(d.path());
        assert_eq!(s.current_number(), 2);
        assert!(
            s.warnings()[0].contains("garbled; using generation 2"),
            "{:?}",
            s.warnings()
        );
        fs::remove_file(d.path().join("current")).unwrap();
        let s = open(d.path());
        assert_eq!(s.current_number(), 2);
        assert!(s.warnings()[0].contains("missing; using generation 2"));
        fs::write(d.path().join("current"), "9\n").unwrap();
        let s = open(d.path());
        assert_eq!(s.current_number(), 2);
        assert!(s.warnings()[0].contains("names generation 9, which is gone"));
    }

    #[test]
    fn a_garbled_state_file_counts_as_trying() {
        let d = tmp();
        {
            let mut s = open(d.path());
            s.commit("a = 1\n", "one", GenState::Good).unwrap();
        }
        fs::write(d.path().join("gen-1.state"), "{not json").unwrap();
        let s = open(d.path());
        assert_eq!(s.current_number(), 1);
        assert_eq!(s.get(1).map(|g| g.meta.state), Some(GenState::Trying));
        assert_eq!(s.warnings().len(), 1);
    }

    #[test]
    fn boot_skips_a_bad_current_generation_for_the_newest_good_one() {
        let d = tmp();
        let mut s = open(d.path());
        assert!(s.boot_generation().is_none());
        s.commit("a = 1\n", "one", GenState::Good).unwrap();
        s.commit("a = 2\n", "two", GenState::Trying).unwrap();
        assert_eq!(s.boot_generation().map(|g| g.number), Some(2));
        s.set_state(2, GenState::Bad).unwrap();
        assert_eq!(s.boot_generation().map(|g| g.number), Some(1));
        let input = s.boot_layer().unwrap();
        assert_eq!(
            input.source,
            d.path().join("gen-1.toml").display().to_string()
        );
        assert_eq!(input.body, LayerBody::Text("a = 1\n".into()));
        assert_eq!(s.previous_good(2).map(|g| g.number), Some(1));
        assert!(s.previous_good(1).is_none());
    }

    #[test]
    fn a_generation_whose_boot_never_reached_ready_is_marked_bad_and_the_last_good_used() {
        let d = tmp();
        {
            let mut s = open(d.path());
            s.commit("a = 1\n", "one", GenState::Good).unwrap();
            s.commit("a = 2\n", "two", GenState::Trying).unwrap();
            // No marker yet: nothing to roll back; this boot tries generation 2.
            assert_eq!(s.roll_back_failed_boot().unwrap(), None);
            s.mark_booting(2).unwrap();
        }
        // The next boot: generation 2 is still trying.
        let mut s = open(d.path());
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
        assert_eq!(s.roll_back_failed_boot().unwrap(), Some((2, Some(1))));
        assert_eq!(s.get(2).map(|g| g.meta.state), Some(GenState::Bad));
        assert_eq!(s.boot_generation().map(|g| g.number), Some(1));
        let s = open(d.path());
        assert_eq!(s.current_number(), 1);
        // A generation that reached ready (good) is left alone.
        let mut s = open(d.path());
        s.mark_booting(1).unwrap();
        assert_eq!(s.roll_back_failed_boot().unwrap(), None);
        // The first generation failing leaves no local layer.
        let d = tmp();
        let mut s = open(d.path());
        s.commit("a = 1\n", "one", GenState::Trying).unwrap();
        s.mark_booting(1).unwrap();
        assert_eq!(s.roll_back_failed_boot().unwrap(), Some((1, None)));
        assert!(s.current().is_none());
    }

    #[test]
    fn unknown_generations_are_typed_errors() {
        let d = tmp();
        let mut s = open(d.path());
        assert!(matches!(
            s.set_current(4),
            Err(StoreError::NoSuchGeneration { number: 4 })
        ));
        assert!(matches!(
            s.set_state(4, GenState::Good),
            Err(StoreError::NoSuchGeneration { number: 4 })
        ));
    }

    #[test]
    fn a_cleared_pointer_means_no_local_layer() {
        let d = tmp();
        {
            let mut s = open(d.path());
            s.commit("a = 1\n", "one", GenState::Bad).unwrap();
            s.clear_current().unwrap();
            assert!(s.current().is_none());
        }
        let s = open(d.path());
        assert!(s.current().is_none());
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
        assert_eq!(s.list().count(), 1);
    }

    /// What the API server does for `set`: under the one lock, the patch applies on top of
    /// whatever is current at that moment.
    #[test]
    fn twenty_concurrent_patches_from_threads_all_land() {
        let d = tmp();
        let store = Arc::new(Mutex::new(open(d.path())));
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut s = store.lock().unwrap();
                    let mut doc = match s.current_text() {
                        Some(t) => Document::parse("local", t).unwrap(),
                        None => Document::new_layer("local"),
                    };
                    let key = keypath::parse_key(&format!("sysctl.net.ros.k{i}")).unwrap();
                    doc.set(&key, keypath::parse_edit_value(&i.to_string()))
                        .unwrap();
                    s.commit(&doc.text(), &format!("set k{i}"), GenState::Good)
                        .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = open(d.path());
        assert_eq!(s.current_number(), 20);
        let table: toml::Table = toml::from_str(s.current_text().unwrap()).unwrap();
        for i in 0..20 {
            assert_eq!(
                table["sysctl"][&format!("net.ros.k{i}")],
                toml::Value::Integer(i),
                "k{i} lost"
            );
        }
    }
}
