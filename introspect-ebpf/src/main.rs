//! introspect's kernel side: thin programs that filter by tracked process, timestamp, copy a
//! bounded prefix of a buffer and emit to one ring buffer. Parsing, assembly and symbolization
//! all happen in userspace.
#![no_std]
#![no_main]

mod backend;
mod conn;
mod data;
mod emit;
mod fd;
mod field;
mod maps;
mod process;
mod python;
mod sample;
mod sched;
mod signal;
mod syscall;
mod tcp;
mod wait;
mod wire;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never reached in a loaded program.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
