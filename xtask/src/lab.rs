//! `cargo xtask lab ...`: installs what the lab needs, builds the images, then hands the
//! arguments to the lab's own command line (`corten-lab`, in `tests/`). The lab library needs
//! protoc-generated bindings, so xtask cannot link it before `deps` has run.
use std::process::Command;

use anyhow::Context;
use clap::Subcommand;

/// The lab subcommands; see `corten-lab --help` for their flags.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab and leave it running: --name NAME --nodes K [--network vxlan|bgp|host-gw]
    /// [--control-plane] (the control plane's binaries are built first).
    Up {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command in a node: --name NAME [--node I] -- CMD ARGS...
    Exec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run kubectl inside a node of a lab with a control plane: --name NAME [--node I] --
    /// ARGS...
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove a lab: --name NAME.
    Down {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove every lab left on this machine.
    Gc,
    /// List the labs on this machine.
    List,
}

/// Runs one lab subcommand; exits with the lab command's exit code.
pub fn run(command: LabCommand) -> anyhow::Result<()> {
    let args: Vec<String> = match command {
        LabCommand::Up { args } => {
            crate::deps::ensure()?;
            crate::images::build(&crate::images::default_dir())?;
            if args.iter().any(|arg| arg == "--control-plane") {
                crate::up::build_cluster_binaries()?;
            }
            prefixed("up", args)
        }
        LabCommand::Exec { args } => exec_args(args),
        LabCommand::Kubectl { args } => prefixed("kubectl", args),
        LabCommand::Down { args } => prefixed("down", args),
        LabCommand::Gc => vec!["gc".to_owned()],
        LabCommand::List => vec!["list".to_owned()],
    };
    let code = corten_lab(&args)?;
    std::process::exit(code);
}

/// `exec` passes everything after `--` untouched to the node.
fn exec_args(args: Vec<String>) -> Vec<String> {
    let mut all = vec!["exec".to_owned()];
    all.extend(args);
    all
}

fn prefixed(sub: &str, args: Vec<String>) -> Vec<String> {
    let mut all = vec![sub.to_owned()];
    all.extend(args);
    all
}

/// Runs `corten-lab ARGS` (building it if needed) and returns its exit code.
pub fn corten_lab(args: &[String]) -> anyhow::Result<i32> {
    let status = Command::new(cargo())
        .current_dir(crate::workspace_root())
        .args([
            "run",
            "--quiet",
            "--package",
            "corten-tests",
            "--bin",
            "corten-lab",
            "--",
        ])
        .args(args)
        .status()
        .context("running corten-lab through cargo")?;
    Ok(status.code().unwrap_or(128))
}

/// The cargo that runs xtask.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}
