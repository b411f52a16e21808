//! Writing a volume's files so that readers never see a half-updated set, the way upstream's
//! `AtomicWriter` does: the files go into a fresh timestamped directory
//! (`..2026_11_22_07_40_00.<nanos>`), a `..data_tmp` symlink to it is renamed over `..data`,
//! and each top-level name the user sees is a symlink into `..data/`. Old timestamped
//! directories and names no longer in the payload are removed afterwards.
//!
//! Owns that layout inside one target directory; it must not write outside it (payload
//! paths are checked: relative, no `..` component) nor follow user-visible symlinks when
//! removing.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Write},
    os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

/// The symlink that names the current data directory.
pub const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileData {
    /// Its content.
    pub content: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileData>;

/// Why a payload could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A payload path is absolute, empty, or climbs out with `..`.
    #[error("invalid path {0:?} in the volume's payload")]
    InvalidPath(String),
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Checks a payload path: relative, not empty, no `..` component, not starting with `..`
/// (which would clash with the writer's own names).
pub fn validate_path(path: &str) -> Result<(), WriteError> {
    let invalid = || WriteError::InvalidPath(path.to_owned());
    if path.is_empty() || path.starts_with("..") || path.len() > 4096 {
        return Err(invalid());
    }
    for component in Path::new(path).components() {
        if !matches!(component, Component::Normal(_)) {
            return Err(invalid());
        }
    }
    Ok(())
}

/// The first component of each payload path (what the user sees in the volume's root).
fn top_level(payload: &Payload) -> BTreeSet<String> {
    payload
        .keys()
        .filter_map(|p| Path::new(p).components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect()
}

/// Whether the current data directory holds exactly `payload`.
fn unchanged(data: &Path, payload: &Payload) -> bool {
    let mut seen = 0usize;
    for (path, file) in payload {
        let full = data.join(path);
        let Ok(meta) = fs::symlink_metadata(&full) else {
            return false;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o7777 != file.mode {
            return false;
        }
        match fs::read(&full) {
            Ok(content) if content == file.content => seen += 1,
            _ => return false,
        }
    }
    count_files(data) == Some(seen)
}

fn count_files(dir: &Path) -> Option<usize> {
    let mut count = 0;
    for entry in fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let kind = entry.file_type().ok()?;
        if kind.is_dir() {
            count += count_files(&entry.path())?;
        } else {
            count += 1;
        }
    }
    Some(count)
}

fn new_data_dir_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = k8s_openapi::jiff::Timestamp::from_second(now.as_secs() as i64)
        .map(|t| t.strftime("%Y_%m_%d_%H_%M_%S").to_string())
        .unwrap_or_else(|_| now.as_secs().to_string());
    format!("..{stamp}.{:09}", now.subsec_nanos())
}

/// Writes `payload` into `target` atomically; returns whether anything changed. `target`
/// must exist.
pub fn write(target: &Path, payload: &Payload) -> Result<bool, WriteError> {
    for path in payload.keys() {
        validate_path(path)?;
    }
    let data_link = target.join(DATA_DIR);
    let old = fs::read_link(&data_link).ok();
    let wanted = top_level(payload);
    if let Some(old) = &old {
        if unchanged(&target.join(old), payload) {
            make_user_links(target, &wanted)?;
            return Ok(false);
        }
    }
    let mut name = new_data_dir_name();
    let mut dir = target.join(&name);
    for attempt in 0..100 {
        if !dir.exists() {
            break;
        }
        name = format!("{}{attempt}", new_data_dir_name());
        dir = target.join(&name);
    }
    fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting the mode of", &dir))?;
    for (path, file) in payload {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .map_err(io_err("creating", &full))?;
        out.write_all(&file.content)
            .map_err(io_err("writing", &full))?;
        out.sync_all().map_err(io_err("syncing", &full))?;
        fs::set_permissions(&full, fs::Permissions::from_mode(file.mode))
            .map_err(io_err("setting the mode of", &full))?;
    }
    let tmp = target.join(DATA_DIR_TMP);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing", &tmp)(e)),
    }
    symlink(&name, &tmp).map_err(io_err("linking", &tmp))?;
    fs::rename(&tmp, &data_link).map_err(io_err("renaming to", &data_link))?;
    make_user_links(target, &wanted)?;
    remove_stale(target, &wanted, &name)?;
    Ok(true)
}

/// Makes `name → ..data/name` for every wanted top-level name that lacks it.
fn make_user_links(target: &Path, wanted: &BTreeSet<String>) -> Result<(), WriteError> {
    for name in wanted {
        let link = target.join(name);
        let pointing = PathBuf::from(DATA_DIR).join(name);
        match fs::read_link(&link) {
            Ok(existing) if existing == pointing => continue,
            Ok(_) => fs::remove_file(&link).map_err(io_err("removing", &link))?,
            Err(_) if fs::symlink_metadata(&link).is_ok() => {
                return Err(WriteError::Io {
                    what: "replacing a non-link at",
                    path: link,
                    source: io::Error::from(io::ErrorKind::AlreadyExists),
                })
            }
            Err(_) => {}
        }
        symlink(&pointing, &link).map_err(io_err("linking", &link))?;
    }
    Ok(())
}

/// Removes user links no longer wanted and data directories other than `current`.
fn remove_stale(target: &Path, wanted: &BTreeSet<String>, current: &str) -> Result<(), WriteError> {
    let entries = fs::read_dir(target).map_err(io_err("listing", target))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if name == DATA_DIR || name == current {
            continue;
        }
        if name.starts_with("..") && kind.is_dir() {
            fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
        } else if kind.is_symlink() && !wanted.contains(&name) {
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str, mode: u32) -> FileData {
        FileData {
            content: text.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn paths_must_stay_inside() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data", "a/./b/.."] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        for good in ["a", "a/b", "a.b", "x..y"] {
            assert!(validate_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn writes_links_and_swaps_data_on_update() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let target = dir.path();
        let first: Payload = [
            ("color".to_owned(), file("blue", 0o644)),
            ("nested/deep".to_owned(), file("x", 0o400)),
        ]
        .into();
        assert!(write(target, &first)?);
        assert_eq!(fs::read_to_string(target.join("color"))?, "blue");
        assert_eq!(fs::read_to_string(target.join("nested/deep"))?, "x");
        assert_eq!(
            fs::read_link(target.join("color"))?,
            Path::new("..data/color")
        );
        let data = fs::read_link(target.join(DATA_DIR))?;
        assert!(data.to_string_lossy().starts_with("..20"), "{data:?}");
        let mode = fs::metadata(target.join("nested/deep"))?
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o400);

        // The same payload again changes nothing.
        assert!(!write(target, &first)?);
        assert_eq!(fs::read_link(target.join(DATA_DIR))?, data);

        // An update swaps the data dir, drops the gone name and the old dir.
        let second: Payload = [("color".to_owned(), file("red", 0o644))].into();
        assert!(write(target, &second)?);
        assert_eq!(fs::read_to_string(target.join("color"))?, "red");
        assert!(fs::symlink_metadata(target.join("nested")).is_err());
        assert!(!target.join(&data).exists());
        let dot_dirs = fs::read_dir(target)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..20"))
            .count();
        assert_eq!(dot_dirs, 1);

        // A mode change alone is a change.
        let third: Payload = [("color".to_owned(), file("red", 0o600))].into();
        assert!(write(target, &third)?);
        assert!(write(target, &Payload::new()).is_ok());
        assert!(fs::symlink_metadata(target.join("color")).is_err());
        Ok(())
    }

    #[test]
    fn bad_payload_writes_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let payload: Payload = [("../escape".to_owned(), file("x", 0o644))].into();
        assert!(matches!(
            write(dir.path(), &payload),
            Err(WriteError::InvalidPath(_))
        ));
        assert_eq!(fs::read_dir(dir.path())?.count(), 0);
        Ok(())
    }
}
