//! Start and stop order of containers from their `depends_on` (DESIGN.md: ordering by
//! dependencies, ordered shutdown in reverse).
//!
//! Pure: names in, ordered waves out. Cycles are rejected by config validation before anything
//! reaches here; a cycle or an unknown name that slips through is reported, never looped on.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("depends_on cycle among: {}", .0.join(", "))]
    Cycle(Vec<String>),
}

/// Start waves: every name in a wave depends only on names in earlier waves. Dependencies on
/// names outside `deps` (disabled or absent) are ignored. Names within a wave are sorted.
pub fn start_waves(deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<Vec<String>>, GraphError> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut waves = Vec::new();
    while done.len() < deps.len() {
        let wave: Vec<String> = deps
            .iter()
            .filter(|(name, _)| !done.contains(name.as_str()))
            .filter(|(_, d)| {
                d.iter()
                    .all(|x| done.contains(x.as_str()) || !deps.contains_key(x))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if wave.is_empty() {
            let stuck = deps
                .keys()
                .filter(|n| !done.contains(n.as_str()))
                .cloned()
                .collect();
            return Err(GraphError::Cycle(stuck));
        }
        for n in &wave {
            if let Some((k, _)) = deps.get_key_value(n) {
                done.insert(k.as_str());
            }
        }
        waves.push(wave);
    }
    Ok(waves)
}

/// Stop order: the start waves reversed (dependents stop before what they depend on).
pub fn stop_waves(deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<Vec<String>>, GraphError> {
    let mut w = start_waves(deps)?;
    w.reverse();
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn waves_respect_dependencies() {
        let g = deps(&[
            ("web", &["db", "cache"]),
            ("db", &["net-setup"]),
            ("cache", &[]),
            ("net-setup", &[]),
        ]);
        assert_eq!(
            start_waves(&g).unwrap(),
            vec![vec!["cache", "net-setup"], vec!["db"], vec!["web"]]
        );
        assert_eq!(stop_waves(&g).unwrap()[0], vec!["web"]);
    }

    #[test]
    fn unknown_dependencies_are_ignored() {
        let g = deps(&[("a", &["disabled-thing"])]);
        assert_eq!(start_waves(&g).unwrap(), vec![vec!["a"]]);
    }

    #[test]
    fn a_cycle_is_reported_not_looped_on() {
        let g = deps(&[("a", &["b"]), ("b", &["a"]), ("c", &[])]);
        assert_eq!(
            start_waves(&g).unwrap_err(),
            GraphError::Cycle(vec!["a".into(), "b".into()])
        );
    }
}
