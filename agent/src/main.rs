//! `corten-agent`: the node agent binary. Parses flags and wires the library's components;
//! no logic of its own.
use anyhow::bail;
use clap::Parser;

/// corten's node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let _args = Args::parse();
    bail!(
        "corten-agent cannot run a node yet: only its socket-LB loader exists \
         (see the status table in README.md)"
    )
}
