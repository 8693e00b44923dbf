//! PostgreSQL's wait events (`wait_event_info`): what a backend said it was waiting for, into
//! the buckets a request's `db_wait_ms` reports and the names `pg_stat_activity` shows.
//!
//! The class is the top byte (`PG_WAIT_LWLOCK` 0x01 … `PG_WAIT_IO` 0x0A, stable since
//! PostgreSQL 9.6); for the Lock class the low 16 bits are the lock tag type, whose order is
//! fixed by `LockTagType` (src/include/storage/lock.h). Other classes' event numbers follow
//! enums that move between server versions, so they are shown as numbers when read from a
//! backend's memory. Events named by `pg_stat_activity` (`--pg-dsn`) get codes of their own
//! ([`named`]) and keep their names.
use std::{collections::BTreeMap, sync::Mutex};

use serde::Serialize;

const CLASS_LWLOCK: u32 = 0x01;
const CLASS_LOCK: u32 = 0x03;
const CLASS_BUFFERPIN: u32 = 0x04;
const CLASS_IO: u32 = 0x0A;

const LOCK_TAGS: [&str; 12] = [
    "relation",
    "extend",
    "frozenid",
    "page",
    "tuple",
    "transactionid",
    "virtualxid",
    "spectoken",
    "object",
    "userlock",
    "advisory",
    "applytransaction",
];

/// Where a spell off the CPU goes in `db_wait_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// Heavyweight locks (rows, tables, transactions), lightweight locks, buffer pins: waiting
    /// for another backend.
    Lock,
    /// Reading or writing files (the IO class), or blocked in the kernel (D state) without an
    /// event.
    Io,
    Other,
}

/// The bucket of a blocking spell with wait event `info`, in task state `state` (2 = D).
pub fn bucket(info: u32, state: u32) -> Bucket {
    match info >> 24 {
        CLASS_LOCK | CLASS_LWLOCK | CLASS_BUFFERPIN => Bucket::Lock,
        CLASS_IO => Bucket::Io,
        0 if state == 2 => Bucket::Io,
        _ => Bucket::Other,
    }
}

/// A heavyweight lock wait (the kind another transaction holds and releases).
pub fn is_lock(info: u32) -> bool {
    info >> 24 == CLASS_LOCK
}

/// The task state of a spell that stands for a sample of a session running a statement with no
/// wait event (`--pg-dsn`): its time is the server's CPU.
pub const SAMPLED_RUNNING: u32 = 0x100;

/// Ids at or above this in a code are [`named`] events.
const NAMED_ID: u32 = 0x8000;
/// Names of events seen by name, by id - [`NAMED_ID`]: a server has a few hundred kinds.
static NAMED: Mutex<Vec<String>> = Mutex::new(Vec::new());
const MAX_NAMED: usize = 0x7fff;

/// The code of the wait event `pg_stat_activity` calls `wait_type`/`event`: the class byte as
/// the server's, a lock's tag as the server's, other events numbered as first seen.
pub fn named(wait_type: &str, event: &str) -> u32 {
    let class: u32 = match wait_type {
        "LWLock" => CLASS_LWLOCK,
        "Lock" => CLASS_LOCK,
        "BufferPin" => CLASS_BUFFERPIN,
        "Activity" => 0x05,
        "Client" => 0x06,
        "Extension" => 0x07,
        "IPC" => 0x08,
        "Timeout" => 0x09,
        "IO" => CLASS_IO,
        "InjectionPoint" => 0x0B,
        _ => 0x0C,
    };
    if class == CLASS_LOCK
        && let Some(tag) = LOCK_TAGS.iter().position(|t| *t == event)
    {
        return class << 24 | tag as u32;
    }
    let full = format!("{wait_type}/{event}");
    let mut names = NAMED.lock().unwrap_or_else(|p| p.into_inner());
    let id = match names.iter().position(|n| *n == full) {
        Some(i) => i,
        None if names.len() < MAX_NAMED => {
            names.push(full);
            names.len() - 1
        }
        None => MAX_NAMED,
    };
    class << 24 | (NAMED_ID + id as u32)
}

/// `Lock/transactionid`, `IO/10`, … as `pg_stat_activity` groups them; `None` for no event.
pub fn name(info: u32) -> Option<String> {
    let id = info & 0xffff;
    if info >> 24 != 0 && id >= NAMED_ID {
        let names = NAMED.lock().unwrap_or_else(|p| p.into_inner());
        return Some(names.get((id - NAMED_ID) as usize).cloned().unwrap_or_else(|| "?".into()));
    }
    let class = match info >> 24 {
        0 => return None,
        CLASS_LWLOCK => "LWLock",
        CLASS_LOCK => "Lock",
        CLASS_BUFFERPIN => "BufferPin",
        0x05 => "Activity",
        0x06 => "Client",
        0x07 => "Extension",
        0x08 => "IPC",
        0x09 => "Timeout",
        CLASS_IO => "IO",
        0x0B => "InjectionPoint",
        c => return Some(format!("0x{c:02x}/{}", info & 0xffff)),
    };
    Some(match LOCK_TAGS.get(id as usize) {
        Some(tag) if info >> 24 == CLASS_LOCK => format!("{class}/{tag}"),
        _ => format!("{class}/{id}"),
    })
}

/// Where a request's database server time went, from the backends' own scheduling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbWait {
    pub lock_ns: u64,
    pub io_ns: u64,
    /// Running, or runnable and waiting for a CPU.
    pub cpu_ns: u64,
    pub other_ns: u64,
    /// Blocked time by wait event.
    pub events: BTreeMap<u32, u64>,
}

impl DbWait {
    pub fn add(&mut self, o: &DbWait) {
        self.lock_ns += o.lock_ns;
        self.io_ns += o.io_ns;
        self.cpu_ns += o.cpu_ns;
        self.other_ns += o.other_ns;
        for (k, v) in &o.events {
            *self.events.entry(*k).or_default() += v;
        }
    }

    pub fn report(&self) -> DbWaitReport {
        let ms = |ns: u64| (ns as f64 / 1e3).round() / 1e3;
        let mut events: Vec<WaitEventLine> =
            self.events.iter().filter_map(|(&info, &ns)| Some(WaitEventLine { event: name(info)?, ms: ms(ns) })).collect();
        events.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        DbWaitReport { lock: ms(self.lock_ns), io: ms(self.io_ns), cpu: ms(self.cpu_ns), other: ms(self.other_ns), events }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaitEventLine {
    pub event: String,
    pub ms: f64,
}

/// A request's `db_wait_ms`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DbWaitReport {
    pub lock: f64,
    pub io: f64,
    pub cpu: f64,
    pub other: f64,
    /// Blocked time by wait event, longest first.
    pub events: Vec<WaitEventLine>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_events_are_named_and_bucketed_as_postgres_groups_them() {
        assert_eq!(name(0x0300_0005).as_deref(), Some("Lock/transactionid"));
        assert_eq!(name(0x0300_0004).as_deref(), Some("Lock/tuple"));
        assert_eq!(name(0x0900_0002).as_deref(), Some("Timeout/2"));
        assert_eq!(name(0), None);
        assert_eq!(bucket(0x0300_0005, 1), Bucket::Lock);
        assert_eq!(bucket(0x0A00_0011, 2), Bucket::Io);
        assert_eq!(bucket(0, 2), Bucket::Io);
        assert_eq!(bucket(0x0600_0000, 1), Bucket::Other);
        assert!(is_lock(0x0300_0005) && !is_lock(0x0100_0005));
    }

    #[test]
    fn events_seen_by_name_keep_it() {
        assert_eq!(named("Lock", "transactionid"), 0x0300_0005);
        let read = named("IO", "DataFileRead");
        assert_eq!(name(read).as_deref(), Some("IO/DataFileRead"));
        assert_eq!(bucket(read, 1), Bucket::Io);
        assert_eq!(named("IO", "DataFileRead"), read);
        let advisory_like = named("Lock", "something new");
        assert!(is_lock(advisory_like) && name(advisory_like).as_deref() == Some("Lock/something new"));
        assert_eq!(bucket(named("LWLock", "WALWrite"), 1), Bucket::Lock);
    }
}
