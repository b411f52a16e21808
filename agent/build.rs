//! Builds the kernel-side programs in `ebpf/` for `bpfel-unknown-none` and leaves the object
//! in `OUT_DIR`, where `src/proxy/object.rs` embeds it.
//!
//! The programs need the nightly toolchain with `rust-src` and `bpf-linker`; `cargo xtask
//! deps` installs both. They are built with their own target dir (`target/bpf`): a nested
//! cargo on the outer target dir would wait forever for the lock the outer build holds.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ebpf_dir = manifest_dir.join("../ebpf");
    for watched in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            ebpf_dir.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("bpf"),
        None => manifest_dir.join("../target/bpf"),
    };
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["-Z", "build-std=core", "--target", "bpfel-unknown-none"])
        .arg("--manifest-path")
        .arg(ebpf_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings (its toolchain, wrappers such as clippy-driver, flags for the
    // host target) must not leak into the nested nightly build.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cargo.env_remove(key);
        }
    }
    let status = cargo.status().unwrap_or_else(|err| {
        fail(&format!(
            "could not run `rustup` ({err}); run `cargo xtask deps` first"
        ))
    });
    if !status.success() {
        fail(
            "building the eBPF programs failed; they need nightly + rust-src and bpf-linker \
             (`cargo xtask deps` installs them)",
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/corten-ebpf");
    copy(&object, &out_dir.join("corten-ebpf.o"));
}

fn copy(from: &Path, to: &Path) {
    if let Err(err) = std::fs::copy(from, to) {
        fail(&format!(
            "copying {} to {}: {err}",
            from.display(),
            to.display()
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
