//! Everything introspect reads from /proc: which processes to watch and what they serve, what
//! an fd is, a process's mappings and memory, a thread's kernel stack and syscall.
pub mod cmdline;
pub mod diag;
pub mod fds;
pub mod maps;
pub mod mem;
pub mod postgres;
pub mod sockets;
pub mod targets;
pub mod task;
