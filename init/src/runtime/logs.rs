//! Log capture of containers: stdout and stderr of each task, through FIFOs, into
//! `<log_dir>/<name>.log`, one line per line of output, prefixed with an RFC 3339 UTC timestamp
//! and the stream (`2025-01-02T03:04:05.678Z stdout hello`), rotated by size
//! (`name.log` → `name.log.1` → … → `name.log.<keep-1>`).
//!
//! Owns: the FIFOs (made per task under a state directory, removed when their copier ends), the
//! copier tasks (tokio tasks, one per stream), the log files and their rotation. A [`LogSink`]
//! lives as long as the container, across restarts; each task gets a fresh [`TaskLogs`] from
//! [`LogSink::attach`], so an old task's copier drains and ends on its own while the new one
//! appends to the same file.
//!
//! How a copier knows its task is gone: the FIFO is opened for reading before the task exists,
//! and a keep-alive write end is held until containerd's shim has opened its own
//! ([`TaskLogs::task_created`], called by `Client::start_task`); after that, end of file means
//! every writer — the shim, hence the container's processes — is gone.
//!
//! Must not: spawn processes, block the runtime for long (file writes are small appends made
//! under a std mutex, never held across an await). Lines longer than [`MAX_LINE`] are split;
//! a partial line is written when its stream ends. Limitations: no rate limit yet (a container
//! that floods its output costs disk I/O, bounded by the rotation).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// Longest line written as one; longer output is split into pieces of this size.
pub const MAX_LINE: usize = 16 * 1024;
/// How much one read of a FIFO takes (a pipe holds 64 KiB; a fuller one is read again at once).
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log of {name}: {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("log of {name}: `{name}` is not a usable file name")]
    Name { name: String },
}

/// Size-based rotation: at most `max_bytes` per file, `keep` files in all (`name.log` included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

impl Default for Rotation {
    /// 1 MiB × 3 files.
    fn default() -> Self {
        Rotation {
            max_bytes: 1 << 20,
            keep: 3,
        }
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The rotating log file of one container.
#[derive(Debug)]
struct LogFile {
    name: String,
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    fn err(&self, path: &Path, source: io::Error) -> LogError {
        LogError::Io {
            name: self.name.clone(),
            path: path.to_owned(),
            source,
        }
    }

    fn open(&mut self) -> Result<&mut File, LogError> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&self.path)
                .map_err(|e| self.err(&self.path, e))?;
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(f);
        }
        match self.file.as_mut() {
            Some(f) => Ok(f),
            None => Err(LogError::Io {
                name: self.name.clone(),
                path: self.path.clone(),
                source: io::Error::other("log file not open"),
            }),
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// name.log.(keep-2) → .(keep-1), …, name.log → name.log.1; the oldest is overwritten.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.file = None;
        if self.rotation.keep <= 1 {
            fs::remove_file(&self.path)
                .or_else(ignore_missing)
                .map_err(|e| self.err(&self.path, e))?;
        } else {
            for n in (1..self.rotation.keep - 1).rev() {
                let (from, to) = (self.rotated(n), self.rotated(n + 1));
                fs::rename(&from, &to)
                    .or_else(ignore_missing)
                    .map_err(|e| self.err(&from, e))?;
            }
            let first = self.rotated(1);
            fs::rename(&self.path, &first)
                .or_else(ignore_missing)
                .map_err(|e| self.err(&self.path, e))?;
        }
        self.size = 0;
        Ok(())
    }

    fn write_line(&mut self, stream: Stream, line: &[u8], now: SystemTime) -> Result<(), LogError> {
        let mut out = Vec::with_capacity(line.len() + 40);
        out.extend_from_slice(rfc3339(now).as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        self.open()?;
        if self.size > 0 && self.size + out.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        if let Err(e) = self.open()?.write_all(&out) {
            self.file = None;
            return Err(self.err(&self.path, e));
        }
        self.size += out.len() as u64;
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// The log of one container, kept across its restarts.
#[derive(Debug, Clone)]
pub struct LogSink {
    name: String,
    file: Arc<Mutex<LogFile>>,
}

/// Tells FIFO sets of the same sink (and process) apart.
static SEQ: AtomicU64 = AtomicU64::new(0);

impl LogSink {
    /// The sink writing `<log_dir>/<name>.log` (creates `log_dir`; the file is opened on the
    /// first line).
    pub fn new(log_dir: &Path, name: &str, rotation: Rotation) -> Result<Self, LogError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(LogError::Name { name: name.into() });
        }
        fs::create_dir_all(log_dir).map_err(|source| LogError::Io {
            name: name.into(),
            path: log_dir.to_owned(),
            source,
        })?;
        Ok(LogSink {
            name: name.to_owned(),
            file: Arc::new(Mutex::new(LogFile {
                name: name.to_owned(),
                path: log_dir.join(format!("{name}.log")),
                rotation,
                file: None,
                size: 0,
            })),
        })
    }

    /// `<log_dir>/<name>.log`.
    pub fn path(&self) -> PathBuf {
        match self.file.lock() {
            Ok(f) => f.path.clone(),
            Err(p) => p.into_inner().path.clone(),
        }
    }

    /// Writes one line as if the container had printed it (for ros's own notes such as
    /// "restarting after exit 3").
    pub fn note(&self, stream: Stream, line: &str) -> Result<(), LogError> {
        write_line(&self.file, stream, line.as_bytes())
    }

    /// Makes the stdout and stderr FIFOs of a new task under `state_dir` and starts copying
    /// from them. Must run inside a tokio runtime.
    pub fn attach(&self, state_dir: &Path) -> Result<TaskLogs, LogError> {
        let err = |path: &Path| {
            let name = self.name.clone();
            let path = path.to_owned();
            move |source| LogError::Io { name, path, source }
        };
        fs::create_dir_all(state_dir).map_err(err(state_dir))?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut ends = Vec::new();
        let made = |ends: &Vec<(PathBuf, pipe::Receiver, File, Stream)>| {
            for (p, ..) in ends {
                let _ = fs::remove_file(p);
            }
        };
        for stream in [Stream::Stdout, Stream::Stderr] {
            let path = state_dir.join(format!(
                "{}.{}-{}-{seq}.{}",
                self.name,
                std::process::id(),
                stamp,
                stream.as_str()
            ));
            let _ = fs::remove_file(&path);
            if let Err(e) =
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            {
                made(&ends);
                return Err(err(&path)(io::Error::from(e)));
            }
            // Reader first (non-blocking), then our keep-alive writer, which needs a reader.
            let reader = match pipe::OpenOptions::new().open_receiver(&path) {
                Ok(r) => r,
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    made(&ends);
                    return Err(err(&path)(e));
                }
            };
            let keep = match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    made(&ends);
                    return Err(err(&path)(e));
                }
            };
            ends.push((path, reader, keep, stream));
        }
        let mut paths = Vec::new();
        let mut keepalive = Vec::new();
        let mut copiers = Vec::new();
        for (path, reader, keep, stream) in ends {
            paths.push(path.clone());
            keepalive.push(keep);
            let file = Arc::clone(&self.file);
            copiers.push(tokio::spawn(copy(
                self.name.clone(),
                reader,
                path,
                stream,
                file,
            )));
        }
        let (stdout, stderr) = match (paths.first(), paths.get(1)) {
            (Some(o), Some(e)) => (o.clone(), e.clone()),
            _ => {
                return Err(LogError::Name {
                    name: self.name.clone(),
                })
            }
        };
        Ok(TaskLogs {
            name: self.name.clone(),
            stdout,
            stderr,
            keepalive: Mutex::new(keepalive),
            copiers,
        })
    }
}

fn write_line(file: &Mutex<LogFile>, stream: Stream, line: &[u8]) -> Result<(), LogError> {
    let mut f = match file.lock() {
        Ok(f) => f,
        Err(poisoned) => poisoned.into_inner(),
    };
    f.write_line(stream, line, SystemTime::now())
}

/// Copies one FIFO into the log until every writer has closed it, then removes the FIFO.
/// Returns the first write error (reading goes on after one, so the container never blocks on a
/// full pipe; later errors are dropped).
async fn copy(
    name: String,
    reader: pipe::Receiver,
    path: PathBuf,
    stream: Stream,
    file: Arc<Mutex<LogFile>>,
) -> Result<(), LogError> {
    let mut first_err: Option<LogError> = None;
    let mut pending: Vec<u8> = Vec::new();
    let emit = |line: &[u8], first_err: &mut Option<LogError>| {
        if let Err(e) = write_line(&file, stream, line) {
            first_err.get_or_insert(e);
        }
    };
    loop {
        if let Err(e) = reader.readable().await {
            first_err.get_or_insert(LogError::Io {
                name: name.clone(),
                path: path.clone(),
                source: e,
            });
            break;
        }
        // On the stack of this poll only, never across the await: a copier waiting on a quiet
        // container holds no buffer (two per container, 100 containers: 12.5 MiB otherwise).
        let mut buf = [0u8; READ_CHUNK];
        match reader.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                let mut start = 0;
                while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
                    let line = &pending[start..start + pos];
                    for piece in line.chunks(MAX_LINE) {
                        emit(piece, &mut first_err);
                    }
                    if line.is_empty() {
                        emit(b"", &mut first_err);
                    }
                    start += pos + 1;
                }
                pending.drain(..start);
                while pending.len() >= MAX_LINE {
                    let piece: Vec<u8> = pending.drain(..MAX_LINE).collect();
                    emit(&piece, &mut first_err);
                }
                if pending.is_empty() && pending.capacity() > READ_CHUNK {
                    pending = Vec::new();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                first_err.get_or_insert(LogError::Io {
                    name: name.clone(),
                    path: path.clone(),
                    source: e,
                });
                break;
            }
        }
    }
    if !pending.is_empty() {
        emit(&pending, &mut first_err);
    }
    let _ = fs::remove_file(&path);
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The FIFOs of one task and the copiers reading them.
#[derive(Debug)]
pub struct TaskLogs {
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
    keepalive: Mutex<Vec<File>>,
    copiers: Vec<JoinHandle<Result<(), LogError>>>,
}

impl TaskLogs {
    /// The FIFO to hand to the task as its stdout.
    pub fn stdout(&self) -> &Path {
        &self.stdout
    }

    /// The FIFO to hand to the task as its stderr.
    pub fn stderr(&self) -> &Path {
        &self.stderr
    }

    /// Drops the keep-alive writers: call once the shim has opened the FIFOs (after
    /// `Tasks.Create` returned, or failed). `Client::start_task` does it.
    pub fn task_created(&self) {
        match self.keepalive.lock() {
            Ok(mut k) => k.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }

    /// Waits until both copiers have drained their FIFO (the task's processes and shim are gone)
    /// and reports the first write error.
    pub async fn finished(self) -> Result<(), LogError> {
        self.task_created();
        let mut result = Ok(());
        for c in self.copiers {
            match c.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
                Err(join) => {
                    if result.is_ok() {
                        result = Err(LogError::Io {
                            name: self.name.clone(),
                            path: self.stdout.clone(),
                            source: io::Error::other(join.to_string()),
                        });
                    }
                }
            }
        }
        result
    }
}

/// `t` as RFC 3339 in UTC with milliseconds: `2025-01-02T03:04:05.678Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn test_rfc3339_formats_utc_with_millis() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(rfc3339(t), "2025-01-02T03:04:05.678Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_825_600); // 2000-02-29T12:00:00Z
        assert_eq!(rfc3339(leap), "2000-02-29T12:00:00.000Z");
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn test_rotation_keeps_three_files_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::new(
            dir.path(),
            "svc",
            Rotation {
                max_bytes: 200,
                keep: 3,
            },
        )
        .unwrap();
        for i in 0..20 {
            sink.note(Stream::Stdout, &format!("line {i:02} {}", "x".repeat(40)))
                .unwrap();
        }
        let base = dir.path().join("svc.log");
        let names: Vec<_> = {
            let mut v: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names, ["svc.log", "svc.log.1", "svc.log.2"]);
        for n in &names {
            let len = fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 200, "{n}: {len}");
        }
        let last = lines(&base);
        assert!(last.last().unwrap().contains("line 19"), "{last:?}");
        let older = lines(&dir.path().join("svc.log.1"));
        assert!(older.last().unwrap().ends_with(&format!(
            "line {:02} {}",
            20 - last.len() - 1,
            "x".repeat(40)
        )));
        assert!(last[0].ends_with(&format!(
            "stdout line {:02} {}",
            20 - last.len(),
            "x".repeat(40)
        )));
    }

    #[test]
    fn test_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(matches!(
                LogSink::new(dir.path(), bad, Rotation::default()),
                Err(LogError::Name { .. })
            ));
        }
    }

    #[tokio::test]
    async fn test_a_waiting_copier_holds_no_read_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = pipe::OpenOptions::new().open_receiver(&fifo).unwrap();
        let sink = LogSink::new(dir.path(), "quiet", Rotation::default()).unwrap();
        let copier = copy(
            "quiet".into(),
            reader,
            fifo,
            Stream::Stdout,
            sink.file.clone(),
        );
        // What a copier keeps while it waits for a quiet container: its state, not its read
        // buffer (held across the await, a 16 KiB array would be in every copier).
        let size = std::mem::size_of_val(&copier);
        assert!(size < 1024, "copier future is {size} bytes");
    }

    #[tokio::test]
    async fn test_fifo_lines_are_prefixed_and_copier_ends_after_writers_close() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::new(&dir.path().join("log"), "web", Rotation::default()).unwrap();
        let logs = sink.attach(&dir.path().join("state")).unwrap();
        // Stand-in for the shim: open the write ends, then let go of ours.
        let mut out = OpenOptions::new().write(true).open(logs.stdout()).unwrap();
        let mut err = OpenOptions::new().write(true).open(logs.stderr()).unwrap();
        logs.task_created();
        out.write_all(b"hello-out\npartial").unwrap();
        err.write_all(b"hello-err\n").unwrap();
        drop(out);
        drop(err);
        let (stdout, stderr) = (logs.stdout().to_owned(), logs.stderr().to_owned());
        tokio::time::timeout(Duration::from_secs(5), logs.finished())
            .await
            .expect("copiers end at EOF")
            .unwrap();
        let got = lines(&sink.path());
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got.iter().any(|l| l.ends_with("Z stdout hello-out")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|l| l.ends_with("Z stdout partial")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|l| l.ends_with("Z stderr hello-err")),
            "{got:?}"
        );
        assert!(!stdout.exists() && !stderr.exists(), "FIFOs removed");
    }

    #[tokio::test]
    async fn test_long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::new(dir.path(), "big", Rotation::default()).unwrap();
        let logs = sink.attach(&dir.path().join("state")).unwrap();
        let mut out = OpenOptions::new().write(true).open(logs.stdout()).unwrap();
        let err = OpenOptions::new().write(true).open(logs.stderr()).unwrap();
        logs.task_created();
        let writer = std::thread::spawn(move || {
            out.write_all(&vec![b'a'; MAX_LINE * 2 + 10]).unwrap();
            out.write_all(b"\n").unwrap();
        });
        drop(err);
        tokio::time::timeout(Duration::from_secs(5), logs.finished())
            .await
            .unwrap()
            .unwrap();
        writer.join().unwrap();
        let got = lines(&sink.path());
        assert_eq!(got.len(), 3);
        assert!(got[2].ends_with(&"a".repeat(10)));
    }
}
