//! Recordings: every event a live run processed, as JSON lines after a header line, written by
//! `watch --record` and read by `introspect replay`. What the live host added (stacks, what an
//! fd was, the moment a request turned slow) is in the events, so a replay needs no kernel and
//! no /proc and produces what the live run did.
use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

use super::Event;
use crate::output::Sink;

/// This build writes version 2 (events for what fds are); it reads 1 and 2.
pub const VERSION: u32 = 2;

/// First line of a recording: how to turn its monotonic timestamps into wall-clock time.
#[derive(Serialize, Deserialize)]
pub struct Meta {
    pub introspect_recording: u32,
    pub realtime_minus_mono_ns: i128,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{0} is not an introspect recording (no header line)")]
    NoHeader(String),
    #[error("{name} is a version {version} recording; this introspect reads versions 1 to {VERSION}")]
    Version { name: String, version: u32 },
    #[error("{name}:{line}: not an event ({source})")]
    Event { name: String, line: usize, source: serde_json::Error },
    #[error("reading {name}: {source}")]
    Io { name: String, source: io::Error },
}

/// Writes a recording: the header at once, then every event the pipeline hands it.
pub struct Writer {
    out: Box<dyn Write>,
}

impl Writer {
    pub fn new(mut out: Box<dyn Write>, realtime_minus_mono_ns: i128) -> io::Result<Self> {
        let meta = Meta { introspect_recording: VERSION, realtime_minus_mono_ns };
        serde_json::to_writer(&mut out, &meta).map_err(io::Error::other)?;
        out.write_all(b"\n")?;
        Ok(Self { out })
    }
}

impl Sink for Writer {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, ev).map_err(io::Error::other)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads a recording: its header, then its events in order.
pub struct Reader<R> {
    pub meta: Meta,
    name: String,
    lines: io::Lines<R>,
    line: usize,
}

impl<R: BufRead> Reader<R> {
    pub fn new(input: R, name: &str) -> Result<Self, RecordingError> {
        let mut lines = input.lines();
        let first = lines.next().transpose().map_err(|source| RecordingError::Io { name: name.to_string(), source })?.unwrap_or_default();
        let meta: Meta = serde_json::from_str(&first).map_err(|_| RecordingError::NoHeader(name.to_string()))?;
        if !(1..=VERSION).contains(&meta.introspect_recording) {
            return Err(RecordingError::Version { name: name.to_string(), version: meta.introspect_recording });
        }
        Ok(Self { meta, name: name.to_string(), lines, line: 1 })
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Event, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = self.lines.next()?;
        self.line += 1;
        Some(match line {
            Ok(l) => serde_json::from_str(&l).map_err(|source| RecordingError::Event { name: self.name.clone(), line: self.line, source }),
            Err(source) => Err(RecordingError::Io { name: self.name.clone(), source }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FdKind, FdOrigin, Hdr};

    #[test]
    fn what_is_written_reads_back() {
        let buf = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.borrow_mut().write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Writer::new(Box::new(Shared(buf.clone())), 42).unwrap();
        let hdr = Hdr { tgid: 1, tid: 2, ts: 3 };
        let evs = vec![
            Event::Connect { hdr, fd: 5, peer: Some("unix:/tmp/.s.PGSQL.5432".into()) },
            Event::Fd { hdr, fd: 6, origin: FdOrigin::Proc { kind: FdKind::Socket { peer: None } } },
            Event::Close { hdr, fd: 5 },
        ];
        for e in &evs {
            w.event(e).unwrap();
        }
        let text = buf.borrow().clone();
        let r = Reader::new(io::BufReader::new(&text[..]), "t").unwrap();
        assert_eq!(r.meta.realtime_minus_mono_ns, 42);
        assert_eq!(r.map(Result::unwrap).collect::<Vec<_>>(), evs);
        assert!(matches!(Reader::new(io::BufReader::new(&b"{}\n"[..]), "x"), Err(RecordingError::NoHeader(_))));
        let future = br#"{"introspect_recording":9,"realtime_minus_mono_ns":0}"#;
        assert!(matches!(Reader::new(io::BufReader::new(&future[..]), "x"), Err(RecordingError::Version { version: 9, .. })));
    }
}
