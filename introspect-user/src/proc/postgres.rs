//! PostgreSQL servers on this host, found so their backends can be followed through the
//! scheduler: each server (postmaster) process, where its `my_wait_event_info` lives, and the
//! backends it has already forked. The variable is exported in the server binary's dynamic
//! symbol table (PostgreSQL 14 and later: extensions report waits through it); every backend
//! has it at the same address, since the server forks them without exec.
use std::{collections::HashMap, fs};

use object::{Object, ObjectKind, ObjectSegment, ObjectSymbol};

use super::{cmdline::ppid_of, maps};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgServer {
    pub pid: u32,
    pub wait_addr: u64,
    /// Its children now (backends, and its auxiliary processes).
    pub children: Vec<u32>,
}

fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim_end().to_string())
}

/// Every PostgreSQL server running now; the ones that cannot be followed, with why.
pub fn servers() -> (Vec<PgServer>, Vec<String>) {
    let Ok(dir) = fs::read_dir("/proc") else { return (Vec::new(), Vec::new()) };
    let pids: Vec<u32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    let mut parent = HashMap::new();
    let mut postgres = Vec::new();
    for &pid in &pids {
        if comm(pid).as_deref() == Some("postgres") {
            postgres.push(pid);
        }
        if let Some(ppid) = fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(ppid_of) {
            parent.insert(pid, ppid);
        }
    }
    let is_pg = |pid: &u32| postgres.contains(pid);
    let (mut found, mut problems) = (Vec::new(), Vec::new());
    for &pid in postgres.iter().filter(|p| !parent.get(p).is_some_and(is_pg)) {
        match wait_addr(pid) {
            Ok(wait_addr) => {
                let children = parent.iter().filter(|&(_, pp)| *pp == pid).map(|(&c, _)| c).collect();
                found.push(PgServer { pid, wait_addr, children });
            }
            Err(why) => problems.push(format!("PostgreSQL server {pid}: its database waits are not seen ({why})")),
        }
    }
    (found, problems)
}

/// Where `my_wait_event_info` is in server `pid`'s memory.
fn wait_addr(pid: u32) -> Result<u64, String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("its executable: {e}"))?;
    let exe = exe.to_string_lossy().into_owned();
    let data = fs::read(format!("/proc/{pid}/exe")).map_err(|e| format!("{exe}: {e}"))?;
    let elf = object::File::parse(&*data).map_err(|e| format!("{exe}: {e}"))?;
    let sym = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.is_definition() && s.name() == Ok("my_wait_event_info"))
        .map(|s| s.address())
        .ok_or_else(|| format!("{exe} does not export my_wait_event_info: PostgreSQL 14 or later is needed"))?;
    if elf.kind() == ObjectKind::Executable {
        return Ok(sym);
    }
    let first_vaddr = elf.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
    let maps = maps::read(pid).map_err(|e| format!("/proc/{pid}/maps: {e}"))?;
    let bias = maps::load_bias(&maps, &exe, false, first_vaddr).ok_or_else(|| format!("{exe} is not mapped"))?;
    Ok(sym.wrapping_add(bias))
}
