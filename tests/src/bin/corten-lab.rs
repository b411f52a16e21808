//! `corten-lab`: the lab's command line, run by `cargo xtask lab ...` once `cargo xtask
//! deps` has installed what the lab needs. Parses flags and calls the lab library.
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corten_tests::lab::{self, Lab, LabSpec, NetworkMode};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask lab",
    about = "A corten cluster's nodes as network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a lab and leave it running.
    Up {
        /// Lab name (a-z, 0-9, '-').
        #[arg(long)]
        name: String,
        /// Number of nodes; node 0 is the master.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Pod network between nodes: vxlan, bgp or host-gw.
        #[arg(long, default_value = "vxlan")]
        network: NetworkMode,
        /// Directory of image tarballs to import into every node.
        #[arg(long)]
        images: Option<PathBuf>,
    },
    /// Run a command inside a node (its network namespace and cgroup); exit code, stdout
    /// and stderr pass through.
    Exec {
        /// Lab name.
        #[arg(long)]
        name: String,
        /// Node index (0 is the master).
        #[arg(long, default_value_t = 0)]
        node: usize,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove a lab.
    Down {
        /// Lab name.
        #[arg(long)]
        name: String,
    },
    /// Remove every lab left on this machine, also those of killed runs.
    Gc,
    /// List the labs on this machine.
    List,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up {
            name,
            nodes,
            network,
            images,
        } => {
            let spec = LabSpec {
                name: name.clone(),
                nodes,
                network,
                images: images.map_or_else(lab::project_images, |dir| lab::archives_in(&dir)),
                detach: true,
            };
            let lab = Lab::up(spec)?;
            println!("lab {name} is up ({nodes} node(s), network {network})");
            for i in 0..lab.nodes() {
                println!(
                    "  node {i}: {} in netns {}, containerd {}",
                    lab.node_ip(i),
                    lab.node_netns(i),
                    lab.containerd_socket(i).display()
                );
            }
            println!(
                "no kubeconfig yet: corten-server is not built (README status table); \
                 run commands in a node with `cargo xtask lab exec --name {name} -- CMD`"
            );
            lab.keep_running();
            Ok(())
        }
        Command::Exec {
            name,
            node,
            command,
        } => {
            let lab = Lab::attach(&name)?;
            let (program, args) = command.split_first().context("no command given")?;
            let status = lab
                .command(node, program)?
                .args(args)
                .status()
                .with_context(|| format!("running {program} in node {node}"))?;
            std::process::exit(status.code().unwrap_or(128));
        }
        Command::Down { name } => {
            lab::validate_name(&name)?;
            let removed = lab::gc_matching(|lab| lab == name)?;
            if removed.is_empty() {
                println!("lab {name} does not exist");
            } else {
                println!("lab {name} removed");
            }
            Ok(())
        }
        Command::Gc => {
            let removed = lab::gc()?;
            if removed.is_empty() {
                println!("no labs to remove");
            }
            for name in removed {
                println!("removed lab {name}");
            }
            Ok(())
        }
        Command::List => {
            for name in lab::existing_labs() {
                println!("{name}");
            }
            Ok(())
        }
    }
}
