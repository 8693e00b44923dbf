//! Reading another process's memory (root, or ptrace access to it), and the one write
//! introspect ever makes to one: `--interrupt-before`'s, which the user opts into. Without it the
//! ability is dropped at start (`run::forbid`), so [`write_mem`] fails.

#[derive(Debug, thiserror::Error)]
#[error("reading {len} bytes at {addr:#x} in process {pid}: {source}")]
pub struct MemError {
    pub pid: u32,
    pub addr: u64,
    pub len: usize,
    pub source: std::io::Error,
}

pub fn read_mem(pid: u32, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: the local iovec covers `buf`; the kernel checks the remote one.
    let n = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
    if n != buf.len() as isize {
        let source = if n < 0 { std::io::Error::last_os_error() } else { std::io::Error::other("short read") };
        return Err(MemError { pid, addr, len: buf.len(), source });
    }
    Ok(())
}

pub fn read_u64(pid: u32, addr: u64) -> Result<u64, MemError> {
    let mut b = [0u8; 8];
    read_mem(pid, addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Writes `buf` at `addr` in process `pid` (only for `--interrupt-before`).
pub fn write_mem(pid: u32, addr: u64, buf: &[u8]) -> Result<(), MemError> {
    let local = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: the local iovec covers `buf` (only read); the kernel checks the remote one.
    let n = unsafe { libc::process_vm_writev(pid as i32, &local, 1, &remote, 1, 0) };
    if n != buf.len() as isize {
        let source = if n < 0 { std::io::Error::last_os_error() } else { std::io::Error::other("short write") };
        return Err(MemError { pid, addr, len: buf.len(), source });
    }
    Ok(())
}
