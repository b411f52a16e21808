//! The eBPF object built by `build.rs` from `ebpf/`, embedded in the binary with the
//! alignment the ELF parser needs.

/// The object file with every corten eBPF program and map.
pub(crate) static CORTEN_EBPF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/corten-ebpf.o"));
