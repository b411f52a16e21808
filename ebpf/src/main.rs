//! corten's kernel-side programs: one object file, embedded in `corten-agent`.
//!
//! Owns the programs and the map definitions; the map key/value types come from
//! `corten-ebpf-common` and nothing here defines a wire type of its own. It must not hold
//! policy: which services exist and which backends they have is decided in userspace
//! (`agent/src/proxy/`) and reaches the programs only through the maps.
#![no_std]
#![no_main]

mod maps;
mod select;
mod socket_lb;
mod tc_nat;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could panic, so this is never reached at run time.
    loop {}
}

/// The license the kernel sees; GPL-compatible so that GPL-only helpers are available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
