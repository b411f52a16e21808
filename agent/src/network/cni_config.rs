//! Writes the CNI network configuration containerd's CRI plugin uses for pods: a conflist
//! naming `corten-cni` with the node's pod CIDR, written once the control plane has given the
//! node one, atomically (write then rename) so the runtime never reads half a file.
//!
//! Owns that file only.
use std::path::{Path, PathBuf};

use serde_json::json;

/// The file name (the runtime picks the first config in lexical order).
pub const FILE_NAME: &str = "10-corten.conflist";

/// The conflist for a pod CIDR.
pub fn conflist(pod_cidr: &str, mtu: u32, state_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "corten",
        "plugins": [{
            "type": "corten-cni",
            "subnet": pod_cidr,
            "mtu": mtu,
            "dataDir": state_dir.to_string_lossy(),
        }],
    })
}

/// Writes the conflist into `conf_dir`; returns its path.
pub fn write(
    conf_dir: &Path,
    pod_cidr: &str,
    mtu: u32,
    state_dir: &Path,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(conf_dir)?;
    let path = conf_dir.join(FILE_NAME);
    let temporary = conf_dir.join(format!(".{FILE_NAME}.tmp"));
    let text = serde_json::to_string_pretty(&conflist(pod_cidr, mtu, state_dir))
        .map_err(std::io::Error::other)?;
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_names_the_plugin_and_the_node_subnet() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = write(
            dir.path(),
            "10.42.3.0/24",
            1450,
            Path::new("/var/lib/corten/cni"),
        )?;
        let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        assert_eq!(written["plugins"][0]["type"], "corten-cni");
        assert_eq!(written["plugins"][0]["subnet"], "10.42.3.0/24");
        assert_eq!(written["cniVersion"], "1.0.0");
        Ok(())
    }
}
