//! `corten-lab`: the lab's command line, run by `cargo xtask lab ...` once `cargo xtask
//! deps` has installed what the lab needs. Parses flags and calls the lab library.
use std::{path::PathBuf, time::Duration};

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
        /// Run corten-server in node 0 and corten-agent in every node (from target/debug,
        /// or $CORTEN_SERVER_BIN / $CORTEN_AGENT_BIN).
        #[arg(long)]
        control_plane: bool,
        /// With --control-plane: seconds to wait for every node to be Ready.
        #[arg(long, default_value_t = 60)]
        wait_ready: u64,
    },
    /// Run kubectl with the admin kubeconfig inside a node of a lab with a control plane;
    /// exit code, stdout and stderr pass through.
    Kubectl {
        /// Lab name.
        #[arg(long)]
        name: String,
        /// Node index to run it in.
        #[arg(long, default_value_t = 0)]
        node: usize,
        /// kubectl's arguments.
        #[arg(last = true)]
        args: Vec<String>,
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
            control_plane,
            wait_ready,
        } => {
            let spec = LabSpec {
                name: name.clone(),
                nodes,
                network,
                images: images.map_or_else(lab::project_images, |dir| lab::archives_in(&dir)),
                detach: true,
                control_plane,
                extra_agent_args: Vec::new(),
                agent_data_dir_mib: None,
            };
            let lab = Lab::up(spec)?;
            println!("lab {name} is up ({nodes} node(s), network {network})");
            for i in 0..lab.nodes() {
                println!(
                    "  node {i} ({}): {} in netns {}, containerd {}",
                    lab.node_name(i),
                    lab.node_ip(i),
                    lab.node_netns(i),
                    lab.containerd_socket(i).display()
                );
            }
            if lab.has_control_plane() {
                report_control_plane(&lab, Duration::from_secs(wait_ready))?;
            } else {
                println!(
                    "no control plane (add --control-plane for one); run commands in a node \
                     with `cargo xtask lab exec --name {name} -- CMD`"
                );
            }
            lab.keep_running();
            Ok(())
        }
        Command::Kubectl { name, node, args } => {
            let lab = Lab::attach(&name)?;
            let status = lab
                .kubectl_with(node, &lab.admin_kubeconfig()?)?
                .args(&args)
                .status()
                .with_context(|| format!("running kubectl in node {node}"))?;
            std::process::exit(status.code().unwrap_or(128));
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

/// Says where the control plane is and how to reach it, then waits for the nodes: an agent
/// that is not running is reported with its log, and does not make `up` fail.
fn report_control_plane(lab: &Lab, wait: Duration) -> anyhow::Result<()> {
    let paths = lab.paths();
    let kubeconfig = lab.admin_kubeconfig()?;
    // The lab needs root; whoever came in through sudo needs it again to reach the lab.
    let sudo = if std::env::var_os("SUDO_USER").is_some() {
        "sudo "
    } else {
        ""
    };
    println!(
        "control plane: corten-server at {} in node 0 (log {})",
        lab.server_url()?,
        paths.server_log().display()
    );
    for i in 0..lab.nodes() {
        println!(
            "  corten-agent on node {i}: log {}",
            paths.agent_log(i).display()
        );
    }
    println!(
        "kubectl works only inside the lab's namespaces:\n  {sudo}ip netns exec {} kubectl \
         --kubeconfig {} get nodes\n  cargo xtask lab kubectl --name {} -- get nodes",
        lab.node_netns(0),
        kubeconfig.display(),
        lab.name()
    );
    println!(
        "waiting up to {}s for the nodes to be Ready",
        wait.as_secs()
    );
    match lab.wait_for_nodes_ready(wait) {
        Ok(()) => println!("every node is Ready"),
        Err(err) => {
            eprintln!("warning: the API server is up, but the nodes are not Ready: {err:#}")
        }
    }
    Ok(())
}
