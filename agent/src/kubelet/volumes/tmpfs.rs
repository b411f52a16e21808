//! tmpfs mounts for memory-backed volumes (emptyDir `medium: Memory`, secrets, projected
//! volumes), made and removed with the node's `mount` / `umount` tools as upstream's
//! mount-utils does, and the mount table lookup that says whether a directory is one.
//!
//! Owns mounting and unmounting one directory; it must not remove files.
use std::{io, path::Path, process::Command};

/// Why a mount or unmount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The tool could not be run.
    #[error("running {tool}: {source}")]
    Spawn {
        /// `mount` or `umount`.
        tool: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The tool failed.
    #[error("{tool} {path} failed: {stderr}")]
    Failed {
        /// `mount` or `umount`.
        tool: &'static str,
        /// The mount point.
        path: String,
        /// What it said.
        stderr: String,
    },
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            let octal = std::str::from_utf8(digits).ok();
            if let Some(value) = octal.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points listed in a mountinfo text.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// Whether `path` is a mount point now.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mount_points(&info).iter().any(|p| *p == wanted)
}

fn run(tool: &'static str, args: &[&str], path: &Path) -> Result<(), MountError> {
    let output = Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .map_err(|source| MountError::Spawn { tool, source })?;
    if output.status.success() {
        return Ok(());
    }
    Err(MountError::Failed {
        tool,
        path: path.display().to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// The `-o` options of a volume's tmpfs: its size limit in bytes when it has one.
pub fn options(size_bytes: Option<u64>) -> String {
    match size_bytes {
        Some(bytes) if bytes > 0 => format!("mode=0777,size={bytes}"),
        _ => "mode=0777".to_owned(),
    }
}

/// Mounts a tmpfs on `path` (an existing directory) unless one is there already.
pub fn ensure_mounted(path: &Path, size_bytes: Option<u64>) -> Result<(), MountError> {
    if is_mount_point(path) {
        return Ok(());
    }
    run(
        "mount",
        &["-t", "tmpfs", "-o", &options(size_bytes), "tmpfs"],
        path,
    )
}

/// Unmounts `path` if it is a mount point.
pub fn unmount(path: &Path) -> Result<(), MountError> {
    if !is_mount_point(path) {
        return Ok(());
    }
    run("umount", &[], path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_decoded() {
        let info = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    90 22 0:50 / /var/lib/a\\040b rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_points(info), ["/proc", "/var/lib/a b"]);
        assert_eq!(unescape("/x\\134y"), "/x\\y");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn size_limits_become_options() {
        assert_eq!(options(Some(1 << 20)), "mode=0777,size=1048576");
        assert_eq!(options(None), "mode=0777");
    }
}
