//! Image garbage collection, as upstream's kubelet does it (`--image-gc-high-threshold`,
//! `--image-gc-low-threshold`, `--minimum-image-ttl-duration`): each image the runtime
//! holds is tracked with when it was first detected and last used by a container; every
//! period (upstream 5 min) the image filesystem's usage is checked, and when it reaches the
//! high threshold the unused images are deleted through CRI `RemoveImage`, least recently
//! used first, until usage is down to the low threshold. Images in use by any container
//! (running or not), pinned images and the runtime's sandbox image are never deleted, nor
//! images detected less than the minimum age ago. Under disk pressure the eviction manager
//! asks for every unused image to go ([`ImageGc::delete_unused`]).
//!
//! Owns the image records and the choice of images; the image filesystem's size comes from
//! CRI `ImageFsInfo`. It must not remove containers (that is the eviction manager's dead
//! container collection).
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use corten_cri::runtime::CriClient;
use k8s_cri::v1::{
    ImageFsInfoRequest, ImageSpec, ListContainersRequest, ListImagesRequest, RemoveImageRequest,
    StatusRequest,
};
use tracing::{debug, info, warn};

/// How image garbage collection runs (corten-agent's flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageGcPolicy {
    /// Usage percent of the image filesystem at which collection starts (upstream 85).
    pub high_percent: u8,
    /// Usage percent it brings the filesystem down to (upstream 80).
    pub low_percent: u8,
    /// The least time since an image was first detected before it may go (upstream 2 min).
    pub min_age: Duration,
    /// How often usage is checked (upstream 5 min).
    pub period: Duration,
}

impl Default for ImageGcPolicy {
    fn default() -> Self {
        Self {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

/// An image the runtime holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its ID.
    pub id: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the runtime (or the kubelet, for the sandbox image) pins it.
    pub pinned: bool,
}

/// What is known of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRecord {
    /// When it was first seen.
    pub first_detected: Instant,
    /// When a container last used it.
    pub last_used: Instant,
}

/// How many bytes to free on a filesystem with `available` of `capacity` bytes free:
/// `None` below the high threshold, else enough to reach the low one.
pub fn bytes_to_free(available: u64, capacity: u64, policy: &ImageGcPolicy) -> Option<u64> {
    if capacity == 0 {
        return None;
    }
    let used = capacity.saturating_sub(available);
    let usage_percent = used.saturating_mul(100) / capacity;
    if usage_percent < u64::from(policy.high_percent) {
        return None;
    }
    let target_used = capacity.saturating_mul(u64::from(policy.low_percent)) / 100;
    Some(used.saturating_sub(target_used))
}

/// Whether `image` is among the images `in_use` names (by ID or tag).
fn used(image: &ImageInfo, in_use: &HashSet<String>) -> bool {
    in_use.contains(&image.id) || image.tags.iter().any(|t| in_use.contains(t))
}

/// The records of the images the runtime holds.
#[derive(Debug, Default)]
pub struct ImageRecords {
    records: HashMap<String, ImageRecord>,
}

impl ImageRecords {
    /// Brings the records in step with `images` at `now`: new images are first detected
    /// now, those `in_use` are used now, and gone ones are forgotten.
    pub fn detect(&mut self, images: &[ImageInfo], in_use: &HashSet<String>, now: Instant) {
        let present: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        self.records.retain(|id, _| present.contains(id.as_str()));
        for image in images {
            let record = self.records.entry(image.id.clone()).or_insert(ImageRecord {
                first_detected: now,
                last_used: now,
            });
            if used(image, in_use) {
                record.last_used = now;
            }
        }
    }

    /// The record of image `id`.
    pub fn get(&self, id: &str) -> Option<&ImageRecord> {
        self.records.get(id)
    }

    /// The images to delete to free `bytes`: unused, unpinned, older than `min_age`, least
    /// recently used first (then first detected first), until enough is freed — or all of
    /// them if that is not enough.
    pub fn select(
        &self,
        images: &[ImageInfo],
        in_use: &HashSet<String>,
        now: Instant,
        min_age: Duration,
        bytes: u64,
    ) -> Vec<String> {
        let mut candidates: Vec<(&ImageInfo, &ImageRecord)> = images
            .iter()
            .filter(|i| !i.pinned && !used(i, in_use))
            .filter_map(|i| Some((i, self.records.get(&i.id)?)))
            .filter(|(_, r)| now.saturating_duration_since(r.first_detected) >= min_age)
            .collect();
        candidates.sort_by_key(|(i, r)| (r.last_used, r.first_detected, i.id.clone()));
        let mut freed = 0u64;
        let mut out = Vec::new();
        for (image, _) in candidates {
            if freed >= bytes {
                break;
            }
            freed = freed.saturating_add(image.size);
            out.push(image.id.clone());
        }
        out
    }
}

/// The image collector: its policy, records and schedule.
#[derive(Debug)]
pub struct ImageGc {
    policy: ImageGcPolicy,
    records: ImageRecords,
    last_run: Option<Instant>,
    sandbox_image: Option<String>,
}

impl ImageGc {
    /// A collector with `policy`.
    pub fn new(policy: ImageGcPolicy) -> Self {
        Self {
            policy,
            records: ImageRecords::default(),
            last_run: None,
            sandbox_image: None,
        }
    }

    /// The runtime's sandbox image (from its verbose status), pinned for the kubelet.
    async fn sandbox_image(&mut self, cri: &mut CriClient) -> Option<String> {
        if self.sandbox_image.is_none() {
            let status = cri
                .runtime()
                .status(StatusRequest { verbose: true })
                .await
                .ok()?
                .into_inner();
            self.sandbox_image = status
                .info
                .get("config")
                .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
                .and_then(|c| c["sandboxImage"].as_str().map(str::to_owned));
        }
        self.sandbox_image.clone()
    }

    /// The images and the names of those in use, with the records updated.
    async fn detect(&mut self, cri: &mut CriClient) -> Option<(Vec<ImageInfo>, HashSet<String>)> {
        let sandbox = self.sandbox_image(cri).await;
        let images = cri
            .images()
            .list_images(ListImagesRequest { filter: None })
            .await
            .map_err(|e| warn!(error = %e, "listing images for garbage collection failed"))
            .ok()?
            .into_inner()
            .images;
        let containers = cri
            .runtime()
            .list_containers(ListContainersRequest { filter: None })
            .await
            .map_err(
                |e| warn!(error = %e, "listing containers for image garbage collection failed"),
            )
            .ok()?
            .into_inner()
            .containers;
        let in_use: HashSet<String> = containers
            .into_iter()
            .flat_map(|c| [c.image_ref, c.image.map(|i| i.image).unwrap_or_default()])
            .filter(|name| !name.is_empty())
            .collect();
        let images: Vec<ImageInfo> = images
            .into_iter()
            .map(|i| ImageInfo {
                pinned: i.pinned || sandbox.as_ref().is_some_and(|s| i.repo_tags.contains(s)),
                id: i.id,
                tags: i.repo_tags,
                size: i.size,
            })
            .collect();
        self.records.detect(&images, &in_use, Instant::now());
        Some((images, in_use))
    }

    /// Deletes images as [`ImageRecords::select`] picks them to free `bytes`; returns the
    /// bytes freed.
    async fn free(&mut self, cri: &mut CriClient, bytes: u64) -> u64 {
        let Some((images, in_use)) = self.detect(cri).await else {
            return 0;
        };
        let chosen =
            self.records
                .select(&images, &in_use, Instant::now(), self.policy.min_age, bytes);
        let mut freed = 0u64;
        for id in chosen {
            let size = images.iter().find(|i| i.id == id).map_or(0, |i| i.size);
            let removed = cri
                .images()
                .remove_image(RemoveImageRequest {
                    image: Some(ImageSpec {
                        image: id.clone(),
                        ..Default::default()
                    }),
                })
                .await;
            match removed {
                Ok(_) => {
                    info!(image = %id, size, "removed an unused image");
                    freed = freed.saturating_add(size);
                }
                Err(e) => warn!(image = %id, error = %e, "removing an image failed"),
            }
        }
        freed
    }

    /// Every [`ImageGcPolicy::period`]: records the images, and when the image filesystem
    /// is at or above the high threshold frees enough to reach the low one.
    pub async fn periodic(&mut self, cri: &mut CriClient) {
        let now = Instant::now();
        if self
            .last_run
            .is_some_and(|at| now.saturating_duration_since(at) < self.policy.period)
        {
            return;
        }
        self.last_run = Some(now);
        let usage = image_fs_usage(cri).await;
        let Some(bytes) = usage
            .and_then(|(available, capacity)| bytes_to_free(available, capacity, &self.policy))
        else {
            // Still record the images, so that their ages and last uses are known.
            self.detect(cri).await;
            return;
        };
        let freed = self.free(cri, bytes).await;
        if freed < bytes {
            warn!(
                wanted = bytes,
                freed, "image garbage collection freed less than wanted"
            );
        }
    }

    /// Deletes every unused image old enough (disk pressure); returns the bytes freed.
    pub async fn delete_unused(&mut self, cri: &mut CriClient) -> u64 {
        self.free(cri, u64::MAX).await
    }
}

/// The image filesystem's mount point, as the runtime reports it (CRI `ImageFsInfo`).
pub async fn image_fs_mountpoint(cri: &mut CriClient) -> Option<PathBuf> {
    let info = cri
        .images()
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .map_err(|e| debug!(error = %e, "ImageFsInfo failed"))
        .ok()?
        .into_inner();
    info.image_filesystems
        .into_iter()
        .filter_map(|fs| fs.fs_id)
        .map(|id| PathBuf::from(id.mountpoint))
        .find(|p| !p.as_os_str().is_empty())
}

/// The image filesystem's available and total bytes.
async fn image_fs_usage(cri: &mut CriClient) -> Option<(u64, u64)> {
    let (bytes, _) = super::eviction::filesystem(&image_fs_mountpoint(cri).await?)?;
    Some((bytes.available, bytes.capacity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, size: u64) -> ImageInfo {
        ImageInfo {
            id: id.to_owned(),
            tags: vec![format!("example.com/{id}:1")],
            size,
            pinned: false,
        }
    }

    #[test]
    fn collection_starts_at_the_high_threshold_and_aims_at_the_low_one() {
        let policy = ImageGcPolicy::default();
        // 84% used: nothing to do.
        assert_eq!(bytes_to_free(160, 1000, &policy), None);
        // 85% used: down to 80%.
        assert_eq!(bytes_to_free(150, 1000, &policy), Some(50));
        assert_eq!(bytes_to_free(0, 1000, &policy), Some(200));
        assert_eq!(bytes_to_free(0, 0, &policy), None);
    }

    #[test]
    fn least_recently_used_unused_old_enough_images_go_first() {
        let start = Instant::now();
        let min_age = Duration::from_secs(120);
        let mut records = ImageRecords::default();
        let mut pinned = image("pause", 1);
        pinned.pinned = true;
        let images = vec![
            image("a", 100),
            image("b", 200),
            image("c", 300),
            pinned.clone(),
        ];
        // All detected at the start; b used at +10 s, a at +20 s, c in use now.
        records.detect(&images, &HashSet::new(), start);
        records.detect(
            &images,
            &HashSet::from(["b".to_owned()]),
            start + Duration::from_secs(10),
        );
        records.detect(
            &images,
            &HashSet::from(["example.com/a:1".to_owned()]),
            start + Duration::from_secs(20),
        );
        let in_use = HashSet::from(["c".to_owned()]);
        records.detect(&images, &in_use, start + Duration::from_secs(30));
        assert_eq!(
            records.get("a").map(|r| r.last_used),
            Some(start + Duration::from_secs(20))
        );
        assert_eq!(records.get("c").map(|r| r.first_detected), Some(start));
        // Too young: nothing.
        let early = start + Duration::from_secs(60);
        assert!(records
            .select(&images, &in_use, early, min_age, 1)
            .is_empty());
        let later = start + Duration::from_secs(200);
        // b was used before a: b goes first, and is enough for 150 bytes.
        assert_eq!(records.select(&images, &in_use, later, min_age, 150), ["b"]);
        assert_eq!(
            records.select(&images, &in_use, later, min_age, 250),
            ["b", "a"]
        );
        // Never the image in use nor the pinned one.
        assert_eq!(
            records.select(&images, &in_use, later, min_age, u64::MAX),
            ["b", "a"]
        );
        // A new image is young; a gone one is forgotten.
        let now_images = vec![image("a", 100), image("d", 50)];
        records.detect(&now_images, &HashSet::new(), later);
        assert!(records.get("b").is_none());
        assert_eq!(
            records.select(&now_images, &HashSet::new(), later, min_age, u64::MAX),
            ["a"]
        );
    }
}
