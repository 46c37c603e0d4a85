//! Log lines for `ros logs` and `ros service logs`, from files and in-memory lines, optionally
//! followed: the piece of `Node::logs` that needs no container runtime.
//!
//! Owns: reading the last N lines of each source, then (when following) polling the files for
//! appended lines — a file that shrank or was replaced (rotation) is read again from its start —
//! and sending whole lines only (a partial last line waits for its newline). The stream ends
//! when the reader goes away.
//! Must not: know where the files are (the node passes them; `sources_in` lists a directory)
//! or block the runtime for long (reads are small and local).

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::node::LogStream;
use super::proto::LogLine;

/// How often followed files are checked for new lines.
const POLL: Duration = Duration::from_millis(200);

/// Where lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A log file (`/var/log/ros/<name>.log`); may not exist yet.
    File {
        /// What the lines are labelled with.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// Lines held in memory (the boot log's ring); sent once, never followed.
    Lines {
        /// What the lines are labelled with.
        name: String,
        /// The lines.
        lines: Vec<String>,
    },
}

/// Every `*.log` file in `dir`, named by its stem, sorted by name.
pub fn sources_in(dir: &Path) -> Vec<Source> {
    let mut out: Vec<Source> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".log").map(|stem| Source::File {
                        name: stem.to_string(),
                        path: e.path(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    out
}

fn name_of(s: &Source) -> &str {
    match s {
        Source::File { name, .. } | Source::Lines { name, .. } => name,
    }
}

/// Where reading a followed file stands.
struct Cursor {
    name: String,
    path: PathBuf,
    inode: Option<u64>,
    offset: u64,
    partial: Vec<u8>,
}

impl Cursor {
    /// Whole new lines since the last read.
    fn read_new(&mut self) -> Vec<String> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Vec::new();
        };
        if self.inode != Some(meta.ino()) || meta.len() < self.offset {
            // Rotated or truncated: start over on the new file.
            self.inode = Some(meta.ino());
            self.offset = 0;
            self.partial.clear();
        }
        if meta.len() == self.offset {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let read = std::fs::File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset))?;
            f.read_to_end(&mut buf)
        });
        if read.is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            lines.push(String::from_utf8_lossy(&line[..pos]).into_owned());
        }
        lines
    }
}

fn last(lines: Vec<String>, tail: Option<usize>) -> Vec<String> {
    match tail {
        Some(n) if n < lines.len() => {
            let mut q: VecDeque<String> = lines.into();
            q.drain(..q.len() - n);
            q.into()
        }
        _ => lines,
    }
}

/// The lines of `sources` (the last `tail` of each), then, when `follow`, new lines as they are
/// appended to the files. Must be called inside a tokio runtime.
pub fn stream(sources: Vec<Source>, tail: Option<usize>, follow: bool) -> LogStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<LogLine>(256);
    tokio::spawn(async move {
        let mut cursors = Vec::new();
        for source in sources {
            let (name, lines) = match source {
                Source::Lines { name, lines } => (name, lines),
                Source::File { name, path } => {
                    let mut cursor = Cursor {
                        name: name.clone(),
                        path,
                        inode: None,
                        offset: 0,
                        partial: Vec::new(),
                    };
                    let lines = cursor.read_new();
                    cursors.push(cursor);
                    (name, lines)
                }
            };
            for line in last(lines, tail) {
                let item = LogLine {
                    source: name.clone(),
                    line,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }
        if !follow {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = tx.closed() => return,
            }
            for cursor in &mut cursors {
                for line in cursor.read_new() {
                    let item = LogLine {
                        source: cursor.name.clone(),
                        line,
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::io::Write;

    fn line(source: &str, line: &str) -> LogLine {
        LogLine {
            source: source.into(),
            line: line.into(),
        }
    }

    #[tokio::test]
    async fn tail_takes_the_last_lines_of_each_source() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.log"), "1\n2\n3\n").unwrap();
        std::fs::write(d.path().join("b.log"), "x\n").unwrap();
        std::fs::write(d.path().join("notes.txt"), "no\n").unwrap();
        let mut sources = vec![Source::Lines {
            name: "boot".into(),
            lines: vec!["k1".into(), "k2".into()],
        }];
        sources.extend(sources_in(d.path()));
        let got: Vec<LogLine> = stream(sources, Some(2), false).collect().await;
        assert_eq!(
            got,
            [
                line("boot", "k1"),
                line("boot", "k2"),
                line("a", "2"),
                line("a", "3"),
                line("b", "x")
            ]
        );
    }

    #[tokio::test]
    async fn follow_sends_appended_whole_lines_and_survives_rotation() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("web.log");
        std::fs::write(&path, "old\n").unwrap();
        let sources = vec![Source::File {
            name: "web".into(),
            path: path.clone(),
        }];
        let mut s = stream(sources, Some(0), true);
        // Let the stream take its first look before anything is appended.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"new 1\nhalf").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
        assert_eq!(next.unwrap(), Some(line("web", "new 1")));
        f.write_all(b" done\n").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
        assert_eq!(next.unwrap(), Some(line("web", "half done")));
        // Rotation: a new file under the same name.
        std::fs::rename(&path, d.path().join("web.log.1")).unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
        assert_eq!(next.unwrap(), Some(line("web", "fresh")));
    }
}
