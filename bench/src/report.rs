//! The benchmark's rows, the samples collected for them and the report rendered from them
//! (`report.md`, `summary.csv`, `samples.csv`).
//!
//! Owns which rows exist, their order, units and how values print. It must not measure
//! anything: the driver adds samples, this module only reads them.

use crate::stats::{self, Summary};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    Ros,
    Baseline,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Ros => "ros",
            System::Baseline => "baseline",
        }
    }
}

/// A row of the report. Every row is "lower is better".
#[derive(Debug)]
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
}

const fn m(key: &'static str, label: &'static str, unit: &'static str) -> Metric {
    Metric { key, label, unit }
}

/// Every row, in report order. A run that measured a system must fill each one for it.
pub const METRICS: &[Metric] = &[
    m("boot.userspace", "kernel start → kernel runs /init", "s"),
    m(
        "boot.init",
        "kernel start → init started (ros PID 1 / systemd)",
        "s",
    ),
    m(
        "boot.containerd",
        "kernel start → containerd answering",
        "s",
    ),
    m(
        "boot.first_container",
        "kernel start → first container ran",
        "s",
    ),
    m("boot.ready", "kernel start → ready", "s"),
    m("mem.pid1", "PID 1 resident memory after ready", "MiB"),
    m(
        "mem.containerd",
        "containerd resident memory after ready (all daemons)",
        "MiB",
    ),
    m(
        "mem.containerd.pss",
        "containerd proportional memory after ready (PSS: shared pages counted once)",
        "MiB",
    ),
    m(
        "mem.used",
        "used memory after ready (MemTotal − MemAvailable)",
        "MiB",
    ),
    m("size.boot", "kernel + initramfs, compressed", "MiB"),
    m("size.rootfs", "root filesystem", "MiB"),
    m("size.total", "everything a node boots from", "MiB"),
    m(
        "lat.shell",
        "shell round trip, p50 (included in every latency row)",
        "ms",
    ),
    m("lat.sysctl.p50", "sysctl set until applied, p50", "ms"),
    m("lat.sysctl.p99", "sysctl set until applied, p99", "ms"),
    m(
        "lat.container",
        "one more container running (ros: `ros config set`; baseline: `ctr run -d`)",
        "ms",
    ),
    m(
        "lat.container.ctr",
        "one more container running through `ctr run -d`",
        "ms",
    ),
    m(
        "time.workloads",
        "N workloads, from ready until all run (ros: from its config; baseline: `ctr run -d` one after another)",
        "s",
    ),
    m(
        "lat.ps.p50",
        "with N workloads: list them (`ros ps` / `ctr task ls`), p50",
        "ms",
    ),
    m(
        "lat.ps.p99",
        "with N workloads: list them (`ros ps` / `ctr task ls`), p99",
        "ms",
    ),
    m(
        "mem.used.workloads",
        "used memory with N workloads running",
        "MiB",
    ),
    m(
        "time.workloads.shared",
        "N workloads asking to share a shim, from ready until all run (ros: `shim = \"shared\"`; baseline: `ctr run --annotation io.containerd.runc.v2.group=…`)",
        "s",
    ),
    m(
        "shims.workloads.shared",
        "shims serving them (1 if every start joined the group)",
        "shims",
    ),
    m(
        "mem.used.workloads.shared",
        "used memory with N workloads asking to share a shim",
        "MiB",
    ),
];

pub fn metric(key: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.key == key)
}

/// Samples per (row, system), in the order they were taken.
#[derive(Debug, Default)]
pub struct Results {
    samples: BTreeMap<(&'static str, System), Vec<f64>>,
}

impl Results {
    /// Adds a sample. Keys come from `METRICS`; an unknown key is a bug in the driver, so it is
    /// refused loudly rather than dropped.
    pub fn add(&mut self, key: &str, system: System, value: f64) -> Result<(), String> {
        let metric = metric(key).ok_or_else(|| format!("unknown benchmark row `{key}`"))?;
        self.samples
            .entry((metric.key, system))
            .or_default()
            .push(value);
        Ok(())
    }

    pub fn summary(&self, key: &str, system: System) -> Option<Summary> {
        let s = self
            .samples
            .iter()
            .find(|((k, s), _)| *k == key && *s == system)?;
        stats::summarize(s.1)
    }

    /// `row (system)` for every row without a sample for one of `systems`.
    pub fn missing(&self, systems: &[System]) -> Vec<String> {
        METRICS
            .iter()
            .flat_map(|m| systems.iter().map(move |s| (m, *s)))
            .filter(|(m, s)| self.summary(m.key, *s).is_none())
            .map(|(m, s)| format!("{} ({})", m.key, s.name()))
            .collect()
    }
}

fn decimals(unit: &str) -> usize {
    match unit {
        "s" => 2,
        "shims" => 0,
        _ => 1,
    }
}

fn cell(s: Option<Summary>, unit: &str) -> String {
    let d = decimals(unit);
    match s {
        None => "—".into(),
        Some(s) if s.n == 1 || s.min == s.max => format!("{:.d$}", s.median),
        Some(s) => format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max),
    }
}

fn ratio(ros: Option<Summary>, base: Option<Summary>) -> String {
    match (ros, base) {
        (Some(r), Some(b)) if b.median > 0.0 => format!("{:.2}", r.median / b.median),
        _ => "—".into(),
    }
}

/// What the report says about where and how it was measured.
#[derive(Debug, Clone)]
pub struct Context {
    pub machine: String,
    pub date: String,
    pub runs: usize,
    pub workloads: usize,
    pub sets: usize,
    pub qemu: String,
    /// How each system boots, one sentence.
    pub layout: String,
}

/// The markdown table (also printed on the terminal and quoted in the README).
pub fn table(results: &Results, workloads: usize) -> String {
    let mut out =
        String::from("| row | unit | ros | baseline | ros/baseline |\n|---|---|---|---|---|\n");
    for m in METRICS {
        let r = results.summary(m.key, System::Ros);
        let b = results.summary(m.key, System::Baseline);
        let label = m
            .label
            .replace("N workloads", &format!("{workloads} workloads"));
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} |",
            m.unit,
            cell(r, m.unit),
            cell(b, m.unit),
            ratio(r, b)
        );
    }
    out
}

pub fn markdown(results: &Results, ctx: &Context) -> String {
    format!(
        "# ros benchmark\n\n\
         Measured {date} on {machine}; QEMU {qemu}. {layout}\n\
         Boot rows: median (min–max) of {runs} boot(s) per system, seconds since kernel start \
         (guest clock). Latency rows: host-timed through the guest's serial shell; sysctl over \
         {sets} sets, listing over {sets} calls with {workloads} workloads. Ratio below 1: ros \
         is faster or smaller.\n\n{table}",
        date = ctx.date,
        machine = ctx.machine,
        qemu = ctx.qemu,
        layout = ctx.layout,
        runs = ctx.runs,
        sets = ctx.sets,
        workloads = ctx.workloads,
        table = table(results, ctx.workloads),
    )
}

/// One line per (row, system): the summary the table shows.
pub fn summary_csv(results: &Results) -> String {
    let mut out = String::from("row,unit,system,median,min,max,n\n");
    for m in METRICS {
        for sys in [System::Ros, System::Baseline] {
            if let Some(s) = results.summary(m.key, sys) {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    m.key,
                    m.unit,
                    sys.name(),
                    s.median,
                    s.min,
                    s.max,
                    s.n
                );
            }
        }
    }
    out
}

/// Every sample as taken.
pub fn samples_csv(results: &Results) -> String {
    let mut out = String::from("row,system,index,value\n");
    for m in METRICS {
        for sys in [System::Ros, System::Baseline] {
            let Some((_, v)) = results
                .samples
                .iter()
                .find(|((k, s), _)| *k == m.key && *s == sys)
            else {
                continue;
            };
            for (i, x) in v.iter().enumerate() {
                let _ = writeln!(out, "{},{},{i},{x}", m.key, sys.name());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Results {
        let mut r = Results::default();
        for v in [13.7, 12.9, 14.2] {
            r.add("boot.ready", System::Ros, v).unwrap();
        }
        r.add("boot.ready", System::Baseline, 20.0).unwrap();
        r.add("mem.pid1", System::Ros, 13.05).unwrap();
        r
    }

    #[test]
    fn unknown_rows_are_refused() {
        let mut r = Results::default();
        assert_eq!(
            r.add("boot.nope", System::Ros, 1.0).unwrap_err(),
            "unknown benchmark row `boot.nope`"
        );
    }

    #[test]
    fn table_shows_median_range_and_ratio() {
        let t = table(&sample(), 100);
        assert!(
            t.contains("| kernel start → ready | s | 13.70 (12.90–14.20) | 20.00 | 0.68 |"),
            "{t}"
        );
        assert!(
            t.contains("| PID 1 resident memory after ready | MiB | 13.1 | — | — |"),
            "{t}"
        );
        assert!(t.contains("with 100 workloads: list them"), "{t}");
    }

    #[test]
    fn missing_rows_name_row_and_system() {
        let missing = sample().missing(&[System::Ros]);
        assert!(!missing.contains(&"boot.ready (ros)".to_string()));
        assert!(missing.contains(&"mem.used (ros)".to_string()));
        assert_eq!(missing.len(), METRICS.len() - 2);
    }

    #[test]
    fn csv_files() {
        let r = sample();
        let s = summary_csv(&r);
        assert!(s.starts_with("row,unit,system,median,min,max,n\n"));
        assert!(s.contains("boot.ready,s,ros,13.7,12.9,14.2,3\n"), "{s}");
        assert!(s.contains("boot.ready,s,baseline,20,20,20,1\n"), "{s}");
        let raw = samples_csv(&r);
        assert!(raw.contains("boot.ready,ros,1,12.9\n"), "{raw}");
        assert_eq!(raw.lines().count(), 1 + 3 + 1 + 1);
    }
}
