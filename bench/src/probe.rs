//! Parsers for what a guest prints: `dmesg` timestamps, `systemctl show` monotonic
//! timestamps, `/proc/meminfo` and `VmRSS` lines.
//!
//! Pure text → numbers, so the extraction is tested without a VM; it must not run commands.

/// Seconds since kernel start of the first `dmesg` line containing `needle`
/// (`[   13.744228] ros: ready in 13.710s` → 13.744228).
pub fn kmsg_time(dmesg: &str, needle: &str) -> Option<f64> {
    dmesg.lines().find(|l| l.contains(needle)).and_then(|l| {
        let rest = l.trim_start().strip_prefix('[')?;
        let (stamp, _) = rest.split_once(']')?;
        stamp.trim().parse().ok()
    })
}

/// Seconds from a `KEY=USEC` line of `systemctl show` output; None when absent or 0 (systemd
/// prints 0 for an event that has not happened).
pub fn systemd_secs(show: &str, key: &str) -> Option<f64> {
    show.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&us| us > 0)
        .map(|us| us as f64 / 1e6)
}

/// KiB value of a `/proc/meminfo` key.
fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// MemTotal − MemAvailable in KiB.
pub fn used_kib(meminfo: &str) -> Option<u64> {
    let total = meminfo_kib(meminfo, "MemTotal")?;
    let avail = meminfo_kib(meminfo, "MemAvailable")?;
    total.checked_sub(avail)
}

/// Sum of every `KEY:` line in `text` (one per process: `VmRSS:` from status, `Pss:` from
/// smaps_rollup), in KiB; None when there is none.
pub fn kib_sum(text: &str, key: &str) -> Option<u64> {
    let values: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Number of `ctr task ls` rows in state RUNNING.
pub fn running_tasks(tasks: &str) -> usize {
    tasks
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("RUNNING"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DMESG: &str = "\
[    2.753466] Run /init as init process
[    3.336519] ros: moved initramfs into tmpfs (79.4 MiB)
[    6.500446] ros: containerd system 1.7.24~ds1 answers after 2.326s
[   13.668617] ros: service syslog started (pid 233)
[   13.744228] ros: ready in 13.710s
";

    #[test]
    fn dmesg_timestamps_of_the_first_match() {
        assert_eq!(
            kmsg_time(DMESG, "Run /init as init process"),
            Some(2.753466)
        );
        assert_eq!(kmsg_time(DMESG, "ros: "), Some(3.336519));
        assert_eq!(kmsg_time(DMESG, "ros: ready in"), Some(13.744228));
        assert_eq!(kmsg_time(DMESG, "no such line"), None);
        assert_eq!(kmsg_time("ros: ready in 1s", "ready"), None);
    }

    #[test]
    fn systemd_monotonic_timestamps() {
        let show = "UserspaceTimestampMonotonic=4512345\nFinishTimestampMonotonic=0\n";
        assert_eq!(
            systemd_secs(show, "UserspaceTimestampMonotonic"),
            Some(4.512345)
        );
        assert_eq!(systemd_secs(show, "FinishTimestampMonotonic"), None);
        assert_eq!(systemd_secs(show, "Userspace"), None);
    }

    #[test]
    fn meminfo_used_and_rss_sums() {
        let mi = "MemTotal:        1000000 kB\nMemFree:   1 kB\nMemAvailable:     750000 kB\n";
        assert_eq!(used_kib(mi), Some(250000));
        assert_eq!(used_kib("MemTotal: 5 kB\n"), None);
        let rss = "VmRSS:\t   13364 kB\nVmRSS:\t  100 kB\nVmHWM: 1 kB\n";
        assert_eq!(kib_sum(rss, "VmRSS"), Some(13464));
        assert_eq!(kib_sum("", "VmRSS"), None);
        let smaps = "Rss:  51596 kB\nPss:  34873 kB\nPss_Anon:  16324 kB\nPss: 100 kB\n";
        assert_eq!(kib_sum(smaps, "Pss"), Some(34973));
    }

    #[test]
    fn running_task_rows() {
        let t = "TASK PID STATUS\nw1 10 RUNNING\nw2 11 STOPPED\nw3 12 RUNNING\n";
        assert_eq!(running_tasks(t), 2);
    }
}
