//! `cargo xtask up`: the README's first command. Today it brings up a one-node lab (a node
//! namespace with its own containerd and the local images); once corten-server and
//! corten-agent exist it will start them there and print the kubeconfig.
use anyhow::bail;

/// The lab `cargo xtask up` uses.
const LAB: &str = "corten";

/// Builds what is needed and leaves a one-node lab running.
pub fn run() -> anyhow::Result<()> {
    crate::deps::ensure()?;
    crate::images::build(&crate::images::default_dir())?;
    let args: Vec<String> = ["up", "--name", LAB, "--nodes", "1"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let code = crate::lab::corten_lab(&args)?;
    if code != 0 {
        bail!("bringing up lab {LAB} failed (exit {code})");
    }
    println!(
        "corten-server and corten-agent are not built yet, so there is no cluster to talk to; \
         the lab node is ready for them. Remove it with `cargo xtask lab down --name {LAB}`."
    );
    Ok(())
}
