//! Container logs as the kubelet serves them: the CRI log file format containerd writes
//! (`TIMESTAMP STREAM P|F MESSAGE`, one record a line, `P` for a fragment of a longer line),
//! the options of `/containerLogs` (`tailLines`, `timestamps`, `sinceSeconds`/`sinceTime`,
//! `limitBytes`, `follow`, `previous`), and the reader that turns a log file into the bytes
//! of the response, following it while the container runs.
//!
//! Owns the file format and the options' semantics; it must not decide which container's
//! file to read (that is [`super::containers`]) nor know about HTTP.
use std::{future::Future, path::Path, time::Duration};

use bytes::Bytes;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::{
    io::{AsyncReadExt, AsyncSeekExt},
    sync::mpsc,
};

/// How often a followed file is checked for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often, while a followed file does not grow, the runtime is asked whether the
/// container still runs.
const FOLLOW_RUNNING_CHECK: Duration = Duration::from_secs(1);
/// The largest read from the file at once.
const READ_CHUNK: usize = 64 * 1024;

/// Bad `/containerLogs` query parameters (the kubelet answers 400 with the message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogOptionsError {
    /// A number parameter is not an integer.
    #[error("{name}: {value:?} is not an integer")]
    NotANumber {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// A number parameter is out of its range.
    #[error("{name}: must be {rule}")]
    OutOfRange {
        /// The parameter.
        name: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// `sinceTime` is not an RFC 3339 time.
    #[error("sinceTime: {value:?} is not an RFC 3339 time")]
    BadTime {
        /// The value given.
        value: String,
    },
    /// Both `sinceSeconds` and `sinceTime` were given.
    #[error("at most one of sinceTime or sinceSeconds may be specified")]
    BothSince,
}

/// What a `/containerLogs` request asks for (upstream's `PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new records until the container ends.
    pub follow: bool,
    /// The previous instance of the container instead of the current one.
    pub previous: bool,
    /// Only the last N lines (of what is there when the request comes).
    pub tail_lines: Option<u64>,
    /// Prefix every line with its RFC 3339 timestamp (nanoseconds, fixed width).
    pub timestamps: bool,
    /// Only records at or after this time.
    pub since: Option<Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

fn query_bool(value: &str) -> bool {
    value != "0" && !value.eq_ignore_ascii_case("false")
}

fn query_int(name: &'static str, value: &str) -> Result<i64, LogOptionsError> {
    value
        .trim()
        .parse()
        .map_err(|_| LogOptionsError::NotANumber {
            name,
            value: value.to_owned(),
        })
}

impl LogOptions {
    /// Reads the options from query parameters, relative to `now` for `sinceSeconds`.
    pub fn from_query<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
        now: Timestamp,
    ) -> Result<Self, LogOptionsError> {
        let mut options = Self::default();
        let mut since_seconds = None;
        let mut since_time = None;
        for (name, value) in params {
            match name {
                "follow" => options.follow = query_bool(value),
                "previous" => options.previous = query_bool(value),
                "timestamps" => options.timestamps = query_bool(value),
                "tailLines" => {
                    let n = query_int("tailLines", value)?;
                    options.tail_lines =
                        Some(u64::try_from(n).map_err(|_| LogOptionsError::OutOfRange {
                            name: "tailLines",
                            rule: "greater than or equal to 0",
                        })?);
                }
                "limitBytes" => {
                    let n = query_int("limitBytes", value)?;
                    if n < 1 {
                        return Err(LogOptionsError::OutOfRange {
                            name: "limitBytes",
                            rule: "greater than 0",
                        });
                    }
                    options.limit_bytes = u64::try_from(n).ok();
                }
                "sinceSeconds" => {
                    let n = query_int("sinceSeconds", value)?;
                    if n < 1 {
                        return Err(LogOptionsError::OutOfRange {
                            name: "sinceSeconds",
                            rule: "greater than 0",
                        });
                    }
                    since_seconds = Some(n);
                }
                "sinceTime" => {
                    since_time =
                        Some(
                            value
                                .parse::<Timestamp>()
                                .map_err(|_| LogOptionsError::BadTime {
                                    value: value.to_owned(),
                                })?,
                        );
                }
                _ => {}
            }
        }
        options.since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => return Err(LogOptionsError::BothSince),
            (Some(seconds), None) => now.checked_sub(SignedDuration::from_secs(seconds)).ok(),
            (None, time) => time,
        };
        Ok(options)
    }
}

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// When the runtime read it.
    pub timestamp: Timestamp,
    /// Where it came from.
    pub stream: Stream,
    /// Whether it is a fragment of a line that continues in the next record.
    pub partial: bool,
    /// The text, without the line's newline.
    pub message: &'a [u8],
}

/// A line of a log file that is not a CRI record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a CRI log record: {0}")]
pub struct RecordError(&'static str);

fn split_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = line.iter().position(|b| *b == b' ')?;
    Some((&line[..at], &line[at + 1..]))
}

/// Parses one line of a CRI log file (without its trailing newline).
pub fn parse_record(line: &[u8]) -> Result<Record<'_>, RecordError> {
    let (time, rest) = split_field(line).ok_or(RecordError("no timestamp"))?;
    let timestamp = std::str::from_utf8(time)
        .ok()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .ok_or(RecordError("bad timestamp"))?;
    let (stream, rest) = split_field(rest).ok_or(RecordError("no stream"))?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return Err(RecordError("unknown stream")),
    };
    // The tags are `:`-separated; the first says whether the line is complete. A record
    // with an empty message may end right after the tags.
    let (tags, message) = split_field(rest).unwrap_or((rest, &[]));
    let partial = match tags.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return Err(RecordError("unknown tag")),
    };
    Ok(Record {
        timestamp,
        stream,
        partial,
        message,
    })
}

/// Whether writing goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// More may be written.
    Continue,
    /// `limitBytes` is reached: the response ends.
    LimitReached,
}

/// Turns records into response bytes: joins fragments, prefixes timestamps, filters by
/// `since`, and cuts at `limitBytes` (upstream kubelet's log writer).
#[derive(Debug)]
pub struct LogWriter {
    timestamps: bool,
    since: Option<Timestamp>,
    remaining: Option<u64>,
    /// Whether the next record starts a new line (the previous one was complete).
    at_line_start: bool,
}

impl LogWriter {
    /// A writer for these options.
    pub fn new(options: &LogOptions) -> Self {
        Self {
            timestamps: options.timestamps,
            since: options.since,
            remaining: options.limit_bytes,
            at_line_start: true,
        }
    }

    /// Appends what `record` contributes to the output to `out`.
    pub fn write(&mut self, record: &Record<'_>, out: &mut Vec<u8>) -> Flow {
        let starts_line = self.at_line_start;
        self.at_line_start = !record.partial;
        if self.since.is_some_and(|since| record.timestamp < since) {
            return Flow::Continue;
        }
        let mut line = Vec::with_capacity(record.message.len() + 32);
        if self.timestamps && starts_line {
            line.extend_from_slice(format!("{:.9} ", record.timestamp).as_bytes());
        }
        line.extend_from_slice(record.message);
        if !record.partial {
            line.push(b'\n');
        }
        match &mut self.remaining {
            None => {
                out.extend_from_slice(&line);
                Flow::Continue
            }
            Some(remaining) => {
                let take = usize::try_from(*remaining).map_or(line.len(), |r| r.min(line.len()));
                out.extend_from_slice(&line[..take]);
                *remaining -= take as u64;
                if *remaining == 0 {
                    Flow::LimitReached
                } else {
                    Flow::Continue
                }
            }
        }
    }
}

/// The byte offset in `content` where the last `lines` log lines begin (a line is a run of
/// `P` records ended by an `F` record). Only complete file lines are looked at.
pub fn tail_offset(content: &[u8], lines: u64) -> usize {
    if lines == 0 {
        return complete_prefix(content);
    }
    let mut starts = Vec::new();
    let mut offset = 0;
    let mut at_line_start = true;
    for raw in content[..complete_prefix(content)].split_inclusive(|b| *b == b'\n') {
        let text = raw.strip_suffix(b"\n").unwrap_or(raw);
        if let Ok(record) = parse_record(text) {
            if at_line_start {
                starts.push(offset);
            }
            at_line_start = !record.partial;
        }
        offset += raw.len();
    }
    let keep = usize::try_from(lines).unwrap_or(usize::MAX);
    if starts.len() > keep {
        starts[starts.len() - keep]
    } else {
        0
    }
}

/// The length of `content` up to and including its last newline.
fn complete_prefix(content: &[u8]) -> usize {
    content
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1)
}

/// Renders the complete lines of `content` into `out`; returns the bytes consumed (up to
/// the last newline) and whether the limit was reached. Lines that are not records are
/// skipped, as upstream does.
pub fn render(content: &[u8], writer: &mut LogWriter, out: &mut Vec<u8>) -> (usize, Flow) {
    let complete = complete_prefix(content);
    for raw in content[..complete].split(|b| *b == b'\n') {
        if raw.is_empty() {
            continue;
        }
        if let Ok(record) = parse_record(raw) {
            if writer.write(&record, out) == Flow::LimitReached {
                return (complete, Flow::LimitReached);
            }
        }
    }
    (complete, Flow::Continue)
}

/// Failures reading a log file.
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    /// The file could not be opened or read.
    #[error("reading the log file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Streams the log file at `path` into `sink` as the options say. With `follow`, new
/// records are sent as they are written until `still_running` says the container ended (and
/// the file is drained), the limit is reached, or the receiver goes away.
pub async fn stream_file<F, Fut>(
    path: &Path,
    options: &LogOptions,
    sink: mpsc::Sender<Bytes>,
    mut still_running: F,
) -> Result<(), LogReadError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let io_err = |source| LogReadError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io_err)?;
    let mut content = Vec::new();
    file.read_to_end(&mut content).await.map_err(io_err)?;
    let start = options
        .tail_lines
        .map_or(0, |lines| tail_offset(&content, lines));
    let mut writer = LogWriter::new(options);
    let mut out = Vec::new();
    let (used, flow) = render(&content[start..], &mut writer, &mut out);
    if !out.is_empty() && sink.send(Bytes::from(out)).await.is_err() {
        return Ok(());
    }
    if flow == Flow::LimitReached || !options.follow {
        return Ok(());
    }
    // Follow: keep the unfinished tail, read what is appended.
    let mut pending = content.split_off(start + used);
    let mut position = file.stream_position().await.map_err(io_err)?;
    let mut idle = Duration::ZERO;
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        let read = file.read(&mut buffer).await.map_err(io_err)?;
        if read > 0 {
            idle = Duration::ZERO;
            position += read as u64;
            pending.extend_from_slice(&buffer[..read]);
            let mut out = Vec::new();
            let (used, flow) = render(&pending, &mut writer, &mut out);
            pending.drain(..used);
            if !out.is_empty() && sink.send(Bytes::from(out)).await.is_err() {
                return Ok(());
            }
            if flow == Flow::LimitReached {
                return Ok(());
            }
            continue;
        }
        if idle >= FOLLOW_RUNNING_CHECK {
            idle = Duration::ZERO;
            if !still_running().await {
                // One last look: records written just before the container ended.
                let mut rest = Vec::new();
                file.read_to_end(&mut rest).await.map_err(io_err)?;
                pending.extend_from_slice(&rest);
                let mut out = Vec::new();
                render(&pending, &mut writer, &mut out);
                if !out.is_empty() {
                    let _ = sink.send(Bytes::from(out)).await;
                }
                return Ok(());
            }
        }
        tokio::select! {
            () = sink.closed() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_POLL) => idle += FOLLOW_POLL,
        }
        // A truncated file (copytruncate rotation) is read again from its start.
        let length = tokio::fs::metadata(path).await.map_err(io_err)?.len();
        if length < position {
            file.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(io_err)?;
            position = 0;
            pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-01-02T03:04:05.1Z stdout F line 1
2026-01-02T03:04:06.000000002Z stderr F line 2
2026-01-02T03:04:07Z stdout P par
2026-01-02T03:04:07.5Z stdout F tial 3
2026-01-02T03:04:08Z stdout F line 4
";

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn rendered(content: &str, options: &LogOptions) -> String {
        let mut out = Vec::new();
        let start = options
            .tail_lines
            .map_or(0, |lines| tail_offset(content.as_bytes(), lines));
        render(
            &content.as_bytes()[start..],
            &mut LogWriter::new(options),
            &mut out,
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn records_parse_with_their_stream_and_tag() {
        let record = parse_record(b"2026-01-02T03:04:05.123456789Z stderr P hello world");
        assert_eq!(
            record,
            Ok(Record {
                timestamp: at("2026-01-02T03:04:05.123456789Z"),
                stream: Stream::Stderr,
                partial: true,
                message: b"hello world",
            })
        );
        let empty = parse_record(b"2026-01-02T03:04:05Z stdout F");
        assert_eq!(empty.map(|r| r.message.len()), Ok(0));
        assert!(parse_record(b"garbage").is_err());
        assert!(parse_record(b"2026-01-02T03:04:05Z stdin F x").is_err());
        assert!(parse_record(b"yesterday stdout F x").is_err());
    }

    #[test]
    fn fragments_join_and_both_streams_are_shown() {
        let all = rendered(LOG, &LogOptions::default());
        assert_eq!(all, "line 1\nline 2\npartial 3\nline 4\n");
    }

    #[test]
    fn timestamps_prefix_each_line_once_with_nanoseconds() {
        let options = LogOptions {
            timestamps: true,
            ..LogOptions::default()
        };
        assert_eq!(
            rendered(LOG, &options),
            "2026-01-02T03:04:05.100000000Z line 1\n\
             2026-01-02T03:04:06.000000002Z line 2\n\
             2026-01-02T03:04:07.000000000Z partial 3\n\
             2026-01-02T03:04:08.000000000Z line 4\n"
        );
    }

    #[test]
    fn tail_counts_whole_lines() {
        let tail = |n| {
            rendered(
                LOG,
                &LogOptions {
                    tail_lines: Some(n),
                    ..LogOptions::default()
                },
            )
        };
        assert_eq!(tail(0), "");
        assert_eq!(tail(1), "line 4\n");
        assert_eq!(tail(2), "partial 3\nline 4\n");
        assert_eq!(tail(3), "line 2\npartial 3\nline 4\n");
        assert_eq!(tail(100), "line 1\nline 2\npartial 3\nline 4\n");
    }

    #[test]
    fn since_and_limit_bytes_cut_the_output() {
        let since = LogOptions {
            since: Some(at("2026-01-02T03:04:07.2Z")),
            ..LogOptions::default()
        };
        // The first fragment of line 3 is older than `since`: upstream drops it too.
        assert_eq!(rendered(LOG, &since), "tial 3\nline 4\n");
        let limited = LogOptions {
            limit_bytes: Some(10),
            ..LogOptions::default()
        };
        assert_eq!(rendered(LOG, &limited), "line 1\nlin");
    }

    #[test]
    fn an_unfinished_last_line_waits() {
        let content = "2026-01-02T03:04:05Z stdout F done\n2026-01-02T03:04:05Z stdout F hal";
        let mut out = Vec::new();
        let (used, _) = render(
            content.as_bytes(),
            &mut LogWriter::new(&LogOptions::default()),
            &mut out,
        );
        assert_eq!(out, b"done\n");
        assert_eq!(
            used,
            content
                .find("2026-01-02T03:04:05Z stdout F hal")
                .unwrap_or(0)
        );
    }

    #[test]
    fn options_read_like_upstreams_pod_log_options() {
        let now = at("2026-01-02T03:04:05Z");
        let options = LogOptions::from_query(
            [
                ("follow", "true"),
                ("tailLines", "2"),
                ("timestamps", "true"),
                ("sinceSeconds", "5"),
                ("limitBytes", "100"),
                ("container", "c"),
            ],
            now,
        );
        assert_eq!(
            options,
            Ok(LogOptions {
                follow: true,
                previous: false,
                tail_lines: Some(2),
                timestamps: true,
                since: Some(at("2026-01-02T03:04:00Z")),
                limit_bytes: Some(100),
            })
        );
        assert!(LogOptions::from_query([("tailLines", "-1")], now).is_err());
        assert!(LogOptions::from_query([("limitBytes", "0")], now).is_err());
        assert!(LogOptions::from_query([("sinceSeconds", "x")], now).is_err());
        assert_eq!(
            LogOptions::from_query(
                [("sinceSeconds", "1"), ("sinceTime", "2026-01-02T03:04:05Z")],
                now
            ),
            Err(LogOptionsError::BothSince)
        );
    }

    #[tokio::test]
    async fn following_sends_new_records_until_the_container_ends(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("0.log");
        std::fs::write(&path, "2026-01-02T03:04:05Z stdout F first\n")?;
        let (tx, mut rx) = mpsc::channel(16);
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let options = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        let reader = {
            let path = path.clone();
            let running = running.clone();
            tokio::spawn(async move {
                stream_file(&path, &options, tx, || {
                    let running = running.clone();
                    async move { running.load(std::sync::atomic::Ordering::SeqCst) }
                })
                .await
            })
        };
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
        assert_eq!(first.as_deref(), Some(&b"first\n"[..]));
        {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(&path)?;
            file.write_all(b"2026-01-02T03:04:06Z stdout P sec")?;
            file.flush()?;
            file.write_all(b"\n2026-01-02T03:04:06Z stdout F ond\n")?;
        }
        let mut got = Vec::new();
        while got != b"second\n" {
            let chunk = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
            got.extend_from_slice(&chunk.ok_or("the stream ended early")?);
        }
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
        assert!(
            end.is_none(),
            "the stream goes on after the container ended"
        );
        reader.await??;
        Ok(())
    }
}
