//! Logging for PID 1: a `log::Log` that writes every record to `/dev/kmsg` (so it is in `dmesg`
//! and, by level, on the kernel console), to syslog once `/dev/log` answers (the syslog service),
//! and keeps the recent lines in memory for the recovery shell. Also the writer of ros's stable
//! console lines (`ros: phase …`, `ros: ready in …`).
//!
//! Owns the kmsg format (`<level>ros: message`) and the syslog one (`<daemon.level>ros[1]:
//! message`). Must never panic or block: a write that fails is dropped (there is nowhere else
//! to report it), and the syslog socket is non-blocking, so a stopped or stalled syslogd costs
//! messages, never PID 1's progress.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How many recent lines the recovery shell can show.
const RING_LINES: usize = 200;

/// Kernel log levels used by ros (see `include/linux/kern_levels.h`).
fn kern_level(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Stable console lines go out at KERN_NOTICE so they show with the default console loglevel
/// and with `loglevel=6`, which hides the kernel's own info-level chatter.
const NOTICE: u8 = 5;

/// The syslog socket.
const DEV_LOG: &str = "/dev/log";
/// How often a missing or refusing `/dev/log` is tried again.
const SYSLOG_RETRY: Duration = Duration::from_secs(1);
/// syslog facility `daemon`.
const FACILITY_DAEMON: u8 = 3;

/// The syslog side: a connected non-blocking datagram socket, or when to try again.
#[derive(Default)]
struct Syslog {
    socket: Option<UnixDatagram>,
    next_try: Option<Instant>,
}

impl Syslog {
    fn connect() -> Option<UnixDatagram> {
        let s = UnixDatagram::unbound().ok()?;
        s.connect(DEV_LOG).ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    }

    fn send(&mut self, level: u8, msg: &str) {
        let now = Instant::now();
        if self.socket.is_none() && self.next_try.is_none_or(|t| now >= t) {
            self.socket = Self::connect();
            self.next_try = Some(now + SYSLOG_RETRY);
        }
        let Some(socket) = &self.socket else { return };
        for part in msg.lines() {
            match socket.send(syslog_line(level, part).as_bytes()) {
                Ok(_) => {}
                // A full buffer drops this message; a gone reader (syslog restarting) drops
                // the socket, to reconnect when it is back.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.socket = None;
                    return;
                }
            }
        }
    }
}

/// One syslog datagram (RFC 3164 without timestamp and host: syslogd adds them).
fn syslog_line(level: u8, msg: &str) -> String {
    format!("<{}>ros[1]: {msg}", FACILITY_DAEMON * 8 + level)
}

struct KmsgLogger {
    sink: Mutex<Option<File>>,
    syslog: Mutex<Syslog>,
    ring: Mutex<VecDeque<String>>,
}

static LOGGER: OnceLock<KmsgLogger> = OnceLock::new();

fn logger() -> &'static KmsgLogger {
    LOGGER.get_or_init(|| KmsgLogger {
        sink: Mutex::new(None),
        syslog: Mutex::new(Syslog::default()),
        ring: Mutex::new(VecDeque::new()),
    })
}

impl KmsgLogger {
    fn emit(&self, level: u8, msg: &str) {
        if let Ok(mut ring) = self.ring.lock() {
            if ring.len() >= RING_LINES {
                ring.pop_front();
            }
            ring.push_back(msg.to_string());
        }
        if let Ok(mut syslog) = self.syslog.lock() {
            syslog.send(level, msg);
        }
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        if sink.is_none() {
            *sink = OpenOptions::new().write(true).open("/dev/kmsg").ok();
        }
        if let Some(f) = sink.as_mut() {
            // One write per record: /dev/kmsg takes each write as one message.
            for part in msg.lines() {
                let _ = f.write_all(format!("<{level}>ros: {part}\n").as_bytes());
            }
        } else {
            // No /dev yet (or it failed): stderr is the console for PID 1.
            let _ = writeln!(std::io::stderr(), "ros: {msg}");
        }
    }
}

impl log::Log for KmsgLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        // Libraries' records (oci-client turns on tracing's `log` bridge, so hyper, h2 and
        // reqwest events arrive here too) only from warnings up: their debug lines would flood
        // the console and may carry request details.
        let ours = metadata.target() == "ros" || metadata.target().starts_with("ros::");
        let limit = if ours {
            log::max_level()
        } else {
            log::max_level().min(log::LevelFilter::Warn)
        };
        metadata.level() <= limit
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            self.emit(kern_level(record.level()), &record.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// Installs the kmsg logger. Safe to call more than once (after re-exec it is a new process).
pub fn init(debug: bool) {
    let _ = log::set_logger(logger());
    log::set_max_level(if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
}

/// Re-opens `/dev/kmsg` on the next write (after /dev was mounted or moved).
pub fn reopen() {
    if let Ok(mut sink) = logger().sink.lock() {
        *sink = None;
    }
}

/// Writes one of ros's stable console lines (`ros: …`), always visible on the console.
pub fn console(msg: &str) {
    logger().emit(NOTICE, msg);
}

/// The recent log lines, oldest first.
pub fn recent() -> Vec<String> {
    logger()
        .ring
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default()
}

/// Seconds since the kernel started, from `/proc/uptime` (0.0 if unreadable).
pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|t| t.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_kernel_levels() {
        assert_eq!(kern_level(log::Level::Error), 3);
        assert_eq!(kern_level(log::Level::Info), 6);
        const { assert!(NOTICE < 6) };
    }

    #[test]
    fn syslog_lines_carry_facility_daemon_and_the_level() {
        assert_eq!(syslog_line(3, "boom"), "<27>ros[1]: boom");
        assert_eq!(syslog_line(NOTICE, "ready"), "<29>ros[1]: ready");
    }
}
