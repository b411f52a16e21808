//! Masquerade for pod traffic that leaves the cluster network: a packet from a pod address to
//! anything outside the cluster CIDR leaves the node with the node's address, so the answer
//! finds its way back without the outside knowing any pod route.
//!
//! Owns one nftables table, `ip corten`, replaced as a whole in one `nft -f` transaction (as
//! kube-proxy's nftables mode drives `nft`). It must not touch any other table.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use super::peers::Cidr;

/// The nftables table corten owns.
pub const TABLE: &str = "corten";

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    /// `nft` could not be run.
    #[error("running nft (install nftables: `cargo xtask deps`): {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the ruleset.
    #[error("nft refused the masquerade rules: {0}")]
    Refused(String),
}

/// The ruleset: the table is created (so that deleting it cannot fail), deleted, and written
/// again, all in one transaction.
pub fn ruleset(cluster_cidr: Cidr) -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster_cidr} ip daddr != {cluster_cidr} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// Installs (or replaces) the rules in the current network namespace.
pub fn install(cluster_cidr: Cidr) -> Result<(), MasqueradeError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MasqueradeError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset(cluster_cidr).as_bytes())
            .map_err(MasqueradeError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(MasqueradeError::Spawn)?;
    if !output.status.success() {
        return Err(MasqueradeError::Refused(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_replaces_one_table_and_masquerades_only_traffic_leaving_the_cluster() {
        let rules = ruleset("10.42.0.0/16".parse().expect("cidr"));
        let lines: Vec<&str> = rules.lines().map(str::trim).collect();
        assert_eq!(lines[0], "table ip corten");
        assert_eq!(lines[1], "delete table ip corten");
        assert!(lines.contains(&"type nat hook postrouting priority srcnat; policy accept;"));
        assert!(lines.contains(&"ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 masquerade"));
        assert_eq!(rules.matches("table ip").count(), 3, "{rules}");
    }
}
