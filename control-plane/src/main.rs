//! `corten-server`: the control-plane binary. Parses flags and wires the library's
//! components; no logic of its own.
use anyhow::bail;
use clap::Parser;

/// corten's control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let _args = Args::parse();
    bail!("corten-server cannot serve yet: the control plane is not built (see README.md)")
}
