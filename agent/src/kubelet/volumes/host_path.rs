//! hostPath volumes' `type` checks, as upstream's hostPath plugin makes them before a mount:
//! `DirectoryOrCreate` and `FileOrCreate` create what is missing (a 0755 directory with its
//! parents; an empty 0644 file whose parent must exist), `Directory`, `File`, `Socket`,
//! `CharDevice` and `BlockDevice` require the path to be of that kind, unset (or empty)
//! checks nothing.
//!
//! Owns those checks on the node's filesystem; it must never delete or change anything that
//! exists at a host path.
use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Why a hostPath failed its type check.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    /// The path is not of the wanted kind (or does not exist).
    #[error("hostPath type check failed: {path} is not a {kind}")]
    WrongKind {
        /// The path.
        path: String,
        /// What it should have been.
        kind: &'static str,
    },
    /// The type is not one upstream knows.
    #[error("hostPath type {0:?} is not supported")]
    UnknownType(String),
    /// Creating a missing path failed.
    #[error("creating {path} for hostPath: {source}")]
    Create {
        /// The path.
        path: String,
        /// The error.
        source: io::Error,
    },
}

fn wrong(path: &Path, kind: &'static str) -> HostPathError {
    HostPathError::WrongKind {
        path: path.display().to_string(),
        kind,
    }
}

fn created(path: &Path) -> impl FnOnce(io::Error) -> HostPathError + '_ {
    move |source| HostPathError::Create {
        path: path.display().to_string(),
        source,
    }
}

/// Checks (and for the `...OrCreate` types, makes) `path` as hostPath `kind` says.
pub fn check(path: &Path, kind: Option<&str>) -> Result<(), HostPathError> {
    let meta = fs::metadata(path);
    let file_type = meta.as_ref().ok().map(|m| m.file_type());
    match kind.unwrap_or_default() {
        "" => Ok(()),
        "DirectoryOrCreate" => match file_type {
            Some(t) if t.is_dir() => Ok(()),
            Some(_) => Err(wrong(path, "directory")),
            None => {
                fs::create_dir_all(path).map_err(created(path))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(created(path))
            }
        },
        "Directory" => match file_type {
            Some(t) if t.is_dir() => Ok(()),
            _ => Err(wrong(path, "directory")),
        },
        "FileOrCreate" => match file_type {
            Some(t) if t.is_file() => Ok(()),
            Some(_) => Err(wrong(path, "file")),
            None => match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(path)
            {
                Ok(_) => Ok(()),
                // Someone made it in between: check what it is.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => check(path, Some("File")),
                Err(e) => Err(created(path)(e)),
            },
        },
        "File" => match file_type {
            Some(t) if t.is_file() => Ok(()),
            _ => Err(wrong(path, "file")),
        },
        "Socket" => match file_type {
            Some(t) if t.is_socket() => Ok(()),
            _ => Err(wrong(path, "socket")),
        },
        "CharDevice" => match file_type {
            Some(t) if t.is_char_device() => Ok(()),
            _ => Err(wrong(path, "character device")),
        },
        "BlockDevice" => match file_type {
            Some(t) if t.is_block_device() => Ok(()),
            _ => Err(wrong(path, "block device")),
        },
        other => Err(HostPathError::UnknownType(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_and_created() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        let file = root.join("file");
        fs::write(&file, "x")?;
        let socket_path = root.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket_path)?;
        let missing = root.join("missing");

        // Unset checks nothing, not even existence.
        check(&missing, None)?;
        check(&missing, Some(""))?;
        assert!(!missing.exists());

        check(root, Some("Directory"))?;
        assert!(check(&file, Some("Directory")).is_err());
        assert!(check(&missing, Some("Directory")).is_err());
        check(&file, Some("File"))?;
        assert!(check(root, Some("File")).is_err());
        check(&socket_path, Some("Socket"))?;
        assert!(check(&file, Some("Socket")).is_err());
        check(Path::new("/dev/null"), Some("CharDevice"))?;
        assert!(check(&file, Some("CharDevice")).is_err());
        assert!(check(&file, Some("BlockDevice")).is_err());
        assert!(check(&file, Some("Bogus")).is_err());

        let made_dir = root.join("a/b");
        check(&made_dir, Some("DirectoryOrCreate"))?;
        assert!(made_dir.is_dir());
        assert_eq!(fs::metadata(&made_dir)?.permissions().mode() & 0o777, 0o755);
        assert!(check(&file, Some("DirectoryOrCreate")).is_err());

        let made_file = root.join("new-file");
        check(&made_file, Some("FileOrCreate"))?;
        assert!(made_file.is_file());
        assert_eq!(fs::read(&made_file)?.len(), 0);
        assert!(check(root, Some("FileOrCreate")).is_err());
        assert!(check(&root.join("no/parent"), Some("FileOrCreate")).is_err());
        // An existing file keeps its content.
        check(&file, Some("FileOrCreate"))?;
        assert_eq!(fs::read_to_string(&file)?, "x");
        Ok(())
    }
}
