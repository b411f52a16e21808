//! Images without a registry (k3s air-gap style): OCI image-layout tarballs dropped into the
//! agent's image directory are imported into containerd's `k8s.io` namespace at start and
//! whenever new files appear; the images the runtime holds are reported on the Node.
//!
//! Owns the image directory's bookkeeping (which files were imported); the import itself
//! is `corten_cri::import`.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use corten_cri::runtime::CriClient;
use k8s_cri::v1::ListImagesRequest;
use serde_json::{json, Value};
use tracing::{info, warn};

/// How often the image directory is looked at.
const SCAN_PERIOD: Duration = Duration::from_secs(5);

/// Archives in a directory (`.tar`, `.tar.gz` is not supported by the importer).
fn archives(dir: &Path) -> Vec<(PathBuf, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, SystemTime)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .filter_map(|p| {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((p, modified))
        })
        .collect();
    out.sort();
    out
}

/// Imports every new or changed archive of `dir`; returns how many were imported.
pub async fn import_new(
    socket: &Path,
    dir: &Path,
    seen: &mut HashMap<PathBuf, SystemTime>,
) -> usize {
    let mut imported = 0;
    for (path, modified) in archives(dir) {
        if seen.get(&path) == Some(&modified) {
            continue;
        }
        let channel = match corten_cri::connect(socket).await {
            Ok(channel) => channel,
            Err(e) => {
                warn!(error = %e, "cannot reach containerd to import images");
                return imported;
            }
        };
        match corten_cri::import::import_archive(channel, corten_cri::K8S_NAMESPACE, &path).await {
            Ok(images) => {
                for image in &images {
                    info!(image = %image.name, archive = %path.display(), "imported");
                }
                imported += 1;
                seen.insert(path, modified);
            }
            Err(e) => {
                warn!(archive = %path.display(), error = %e, "importing an image archive failed");
                // Retry on the next scan only if the file changes.
                seen.insert(path, modified);
            }
        }
    }
    imported
}

/// Imports at start, then watches the directory forever.
pub async fn watch_dir_forever(
    socket: PathBuf,
    dir: PathBuf,
    mut seen: HashMap<PathBuf, SystemTime>,
) {
    loop {
        tokio::time::sleep(SCAN_PERIOD).await;
        import_new(&socket, &dir, &mut seen).await;
    }
}

/// The images the runtime holds, as `status.images` entries.
pub async fn node_images(cri: &mut CriClient) -> Value {
    let listed = cri
        .images()
        .list_images(ListImagesRequest { filter: None })
        .await;
    match listed {
        Ok(response) => json!(response
            .into_inner()
            .images
            .into_iter()
            .map(|image| {
                let mut names = image.repo_tags.clone();
                names.extend(image.repo_digests.clone());
                json!({"names": names, "sizeBytes": image.size})
            })
            .collect::<Vec<_>>()),
        Err(e) => {
            warn!(error = %e, "listing images failed");
            json!([])
        }
    }
}
