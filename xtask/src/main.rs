//! `cargo xtask`: everything that is not plain cargo. Installing what a fresh machine lacks
//! ([`deps`]), building the images ([`images`]), driving the lab ([`lab`]), running every
//! test ([`test`]), fuzzing for a bounded time ([`fuzz`]), benchmarks ([`bench`]) and
//! bringing a cluster up ([`up`]).
//!
//! It orchestrates only: the lab itself is a library in `tests/`, the OCI types live in
//! `cri/`, and nothing here is linked into a corten binary.
mod bench;
mod deps;
mod fuzz;
mod images;
mod lab;
mod test;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "corten's build and test orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what this machine lacks: Debian packages, nightly + rust-src, bpf-linker,
    /// cargo-fuzz, the Python client virtualenv.
    Deps,
    /// Build the OCI image tarballs (pause, busybox) into target/images.
    Images {
        /// Output directory (default: target/images).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Drive the lab: a cluster's nodes as network namespaces on this machine.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// Run every test: formatting, lints, unit tests, then the lab tests (as root).
    Test,
    /// Run each fuzz target in fuzz/ for a bounded time (the `fuzz` step of `test`).
    Fuzz,
    /// Run a benchmark and write target/bench/NAME.json (store, api, scheduler, network,
    /// podstart).
    Bench {
        /// Which benchmark.
        name: String,
    },
    /// Bring up a one-node cluster in a lab and say how to use it.
    Up,
    /// Run kubectl against the cluster `up` made (inside its lab): cargo xtask kubectl -- ARGS.
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Deps => deps::ensure(),
        Command::Images { out } => {
            let out = out.unwrap_or_else(images::default_dir);
            for archive in images::build(&out)? {
                println!("{}", archive.display());
            }
            Ok(())
        }
        Command::Lab { command } => lab::run(command),
        Command::Test => test::run(),
        Command::Fuzz => {
            deps::ensure()?;
            fuzz::run_all().map(drop)
        }
        Command::Bench { name } => bench::run(&name),
        Command::Up => up::run(),
        Command::Kubectl { args } => up::kubectl(args),
    }
}

/// The workspace root (the parent of xtask's manifest directory).
fn workspace_root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map(PathBuf::from).unwrap_or(xtask)
}
