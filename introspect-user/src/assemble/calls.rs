//! Calls on outbound connections (the process's own, to a database, a cache, an API): its writes
//! are the requests, its reads the responses. With a parser for the protocol a call has a head
//! (what was asked, and the response's status and framing); without one, each write after a
//! response starts the next call, which is what a request/response protocol looks like from the
//! syscalls alone.
use std::collections::HashMap;

use super::EndReason;
use crate::{
    event::{Dir, Hdr, Head},
    proto::{RequestHead, ResponseHead},
};

/// One request and its response on an outbound connection, in monotonic nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The thread that made it.
    pub tid: u32,
    pub peer: Option<String>,
    /// The entry of its first write.
    pub start_ns: u64,
    /// The return of its last read (of its last write, when nothing came back).
    pub end_ns: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// What was asked, when a parser recognised it.
    pub head: Option<RequestHead>,
    pub response: Option<ResponseHead>,
    pub end: EndReason,
    /// The request its thread was serving when it began (the assembler's sequence number).
    pub request_seq: Option<u64>,
}

struct Open {
    call: Call,
    /// Bytes read since the response's head.
    response_bytes: u64,
}

#[derive(Default)]
pub struct Calls {
    open: HashMap<(u32, i32), Open>,
}

impl Calls {
    /// A write or read on an outbound connection; a call it completes goes to `done`.
    #[expect(clippy::too_many_arguments, reason = "the fields of one data event")]
    pub fn data(
        &mut self,
        hdr: &Hdr,
        dir: Dir,
        fd: i32,
        bytes: u64,
        enter_ts: u64,
        head: Option<&Head>,
        peer: Option<String>,
        request_seq: Option<u64>,
        done: &mut Vec<Call>,
    ) {
        let key = (hdr.tgid, fd);
        match dir {
            Dir::Write => {
                let asks_anew = matches!(head, Some(Head::Request(_)));
                let more_of_it = self.open.get(&key).is_some_and(|o| o.call.bytes_in == 0 && !asks_anew);
                if more_of_it {
                    if let Some(o) = self.open.get_mut(&key) {
                        o.call.bytes_out += bytes;
                        o.call.end_ns = hdr.ts;
                    }
                    return;
                }
                // A write after a response (or a recognised request head) starts the next call.
                if let Some(prev) = self.open.remove(&key) {
                    done.push(finish(prev, EndReason::Delimited));
                }
                let head = match head {
                    Some(Head::Request(r)) => Some(r.clone()),
                    _ => None,
                };
                let call = Call {
                    tid: hdr.tid,
                    peer,
                    start_ns: enter_ts,
                    end_ns: hdr.ts,
                    bytes_out: bytes,
                    bytes_in: 0,
                    head,
                    response: None,
                    end: EndReason::Delimited,
                    request_seq,
                };
                self.open.insert(key, Open { call, response_bytes: 0 });
            }
            Dir::Read => {
                // Bytes nobody asked for (a server's greeting or notice): no call.
                let Some(o) = self.open.get_mut(&key) else { return };
                if bytes == 0 {
                    // The server closed the connection.
                    if let Some(o) = self.open.remove(&key) {
                        done.push(finish(o, EndReason::Delimited));
                    }
                    return;
                }
                o.call.bytes_in += bytes;
                o.call.end_ns = hdr.ts;
                match head {
                    Some(Head::Response(r)) => {
                        o.call.response = Some(*r);
                        o.response_bytes = bytes;
                    }
                    _ => o.response_bytes += bytes,
                }
                let complete = o.call.response.and_then(|r| r.total_len(false)).is_some_and(|total| o.response_bytes >= total);
                if complete && let Some(o) = self.open.remove(&key) {
                    done.push(finish(o, EndReason::Complete));
                }
            }
        }
    }

    /// The connection's fd was closed.
    pub fn close(&mut self, tgid: u32, fd: i32, done: &mut Vec<Call>) {
        if let Some(o) = self.open.remove(&(tgid, fd)) {
            done.push(finish(o, EndReason::Delimited));
        }
    }

    /// The calls still open that began in request `seq` (which is ending), finished.
    pub fn take_made_in(&mut self, seq: u64) -> Vec<Call> {
        let keys: Vec<_> = self.open.iter().filter(|(_, o)| o.call.request_seq == Some(seq)).map(|(k, _)| *k).collect();
        keys.into_iter().filter_map(|k| self.open.remove(&k)).map(|o| finish(o, EndReason::Delimited)).collect()
    }

    /// The process exited at `ts`: a call still waiting for its response ends there.
    pub fn exit(&mut self, pid: u32, ts: u64, done: &mut Vec<Call>) {
        let keys: Vec<_> = self.open.keys().filter(|(tgid, _)| *tgid == pid).copied().collect();
        for key in keys {
            if let Some(mut o) = self.open.remove(&key) {
                if o.call.bytes_in == 0 {
                    o.call.end_ns = ts;
                }
                done.push(finish(o, EndReason::ProcessExit));
            }
        }
    }
}

fn finish(o: Open, end: EndReason) -> Call {
    Call { end, ..o.call }
}
