//! corten's end-to-end test support: the lab ([`lab`]), a multi-node cluster inside network
//! namespaces on one machine (DESIGN.md §9), used by the tests under `tests/tests/` and by
//! `cargo xtask lab`; [`kubectl`], the small conveniences those tests drive it with;
//! [`pod_network`], the pod network checks the network tests share; and [`scripts`], the
//! Python helpers they run inside the lab; [`bench_dir`], where the benches write.
//!
//! Owns everything a test creates on the host: namespaces, links, cgroups, bpffs mounts,
//! containerd processes and their state. It must never touch host state it did not create:
//! no routes in the root namespace, no programs on the root cgroup, no process it did not
//! start.

pub mod kubectl;
pub mod lab;
pub mod pod_network;
pub mod scripts;

/// `target/bench` (under `$CARGO_TARGET_DIR` if set), created: where the benches write their
/// JSON.
pub fn bench_dir() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate's parent directory")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
