//! Imports OCI image-layout tarballs into containerd without a registry (k3s air-gap
//! style): blobs into the content store, an image record per name, in the `k8s.io`
//! namespace where CRI finds them.
//!
//! Owns the containerd content/images/leases calls of an import. It does not unpack layers
//! into snapshots: containerd's CRI plugin unpacks an image the first time a container needs
//! it, exactly as it does for images `ctr import --no-unpack` brought in.
use std::{collections::HashMap, path::Path};

use containerd_client::{
    services::v1::{
        content_client::ContentClient, images_client::ImagesClient, leases_client::LeasesClient,
        CreateImageRequest, CreateRequest as CreateLeaseRequest,
        DeleteRequest as DeleteLeaseRequest, Image, InfoRequest, UpdateImageRequest, UpdateRequest,
        WriteAction, WriteContentRequest,
    },
    types::Descriptor as ProtoDescriptor,
};
use tonic::{metadata::MetadataValue, transport::Channel, Code};
use tracing::{debug, info};

use crate::oci::{Archive, Descriptor, OciError};

/// Largest chunk sent in one content write message (containerd's gRPC limit is 16 MiB).
const CHUNK: usize = 1 << 20;

/// Failures of an import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The archive is unreadable or malformed (not retryable).
    #[error(transparent)]
    Archive(#[from] OciError),
    /// The archive names no image (no `io.containerd.image.name` or full ref name).
    #[error("{0}: index.json names no image")]
    NoImages(String),
    /// containerd refused a call (retryable if containerd was restarting).
    #[error("containerd {call}: {status}")]
    Containerd {
        call: &'static str,
        status: tonic::Status,
    },
    /// A namespace or lease name that cannot be a gRPC header.
    #[error("invalid containerd namespace or lease {0:?}")]
    Header(String),
    /// The blocking archive read was cancelled.
    #[error("reading the archive was cancelled")]
    Cancelled,
}

/// An image now present in containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// Its name, e.g. `corten.local/pause:1`.
    pub name: String,
    /// Digest of the target (manifest or index) the name points at.
    pub digest: String,
    /// Digest of the image config: the image ID CRI reports.
    pub config_digest: String,
}

/// Imports every named image of the archive at `path` into `namespace`.
pub async fn import_archive(
    channel: Channel,
    namespace: &str,
    path: &Path,
) -> Result<Vec<ImportedImage>, ImportError> {
    let owned = path.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || Archive::open(&owned))
        .await
        .map_err(|_| ImportError::Cancelled)??;
    let images = archive.images();
    if images.is_empty() {
        return Err(ImportError::NoImages(path.display().to_string()));
    }
    let mut session = Session::new(channel, namespace)?;
    session.begin_lease().await?;
    let result = session.import_all(&archive, images).await;
    // The lease only protects half-imported blobs from garbage collection; once the image
    // records exist they hold everything, so the lease goes whether or not the import worked.
    let ended = session.end_lease().await;
    let imported = result?;
    ended?;
    Ok(imported)
}

/// The calls of one import, all in one namespace and under one lease.
struct Session {
    content: ContentClient<Channel>,
    images: ImagesClient<Channel>,
    leases: LeasesClient<Channel>,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    lease: Option<(String, MetadataValue<tonic::metadata::Ascii>)>,
}

impl Session {
    fn new(channel: Channel, namespace: &str) -> Result<Self, ImportError> {
        Ok(Self {
            content: ContentClient::new(channel.clone()),
            images: ImagesClient::new(channel.clone()),
            leases: LeasesClient::new(channel),
            namespace: header(namespace)?,
            lease: None,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("containerd-namespace", self.namespace.clone());
        if let Some((_, lease)) = &self.lease {
            metadata.insert("containerd-lease", lease.clone());
        }
        request
    }

    async fn begin_lease(&mut self) -> Result<(), ImportError> {
        let id = format!("corten-import-{}", uuid::Uuid::new_v4());
        // If this process dies mid-import, containerd drops the lease after an hour.
        let expire = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        let expire = humantime_rfc3339(expire);
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), expire)]);
        let request = self.request(CreateLeaseRequest {
            id: id.clone(),
            labels,
        });
        self.leases
            .create(request)
            .await
            .map_err(containerd("Leases.Create"))?;
        self.lease = Some((id.clone(), header(&id)?));
        Ok(())
    }

    async fn end_lease(&mut self) -> Result<(), ImportError> {
        let Some((id, _)) = self.lease.take() else {
            return Ok(());
        };
        let request = self.request(DeleteLeaseRequest { id, sync: false });
        self.leases
            .delete(request)
            .await
            .map_err(containerd("Leases.Delete"))?;
        Ok(())
    }

    async fn import_all(
        &mut self,
        archive: &Archive,
        images: Vec<crate::oci::ArchiveImage>,
    ) -> Result<Vec<ImportedImage>, ImportError> {
        let mut imported = Vec::with_capacity(images.len());
        for image in images {
            let (manifest_descriptor, manifest) = archive.resolve_manifest(&image.target)?;
            self.write_blob(
                &manifest.config,
                archive.blob(&manifest.config)?,
                HashMap::new(),
            )
            .await?;
            let mut manifest_refs = HashMap::from([(
                "containerd.io/gc.ref.content.config".to_owned(),
                manifest.config.digest.clone(),
            )]);
            for (i, layer) in manifest.layers.iter().enumerate() {
                self.write_blob(layer, archive.blob(layer)?, HashMap::new())
                    .await?;
                manifest_refs.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    layer.digest.clone(),
                );
            }
            self.write_blob(
                &manifest_descriptor,
                archive.blob(&manifest_descriptor)?,
                manifest_refs,
            )
            .await?;
            if manifest_descriptor.digest != image.target.digest {
                // The name points at an index: it must keep the chosen manifest alive.
                let refs = HashMap::from([(
                    "containerd.io/gc.ref.content.m.0".to_owned(),
                    manifest_descriptor.digest.clone(),
                )]);
                self.write_blob(&image.target, archive.blob(&image.target)?, refs)
                    .await?;
            }
            self.put_image(&image.name, &image.target).await?;
            info!(image = %image.name, digest = %image.target.digest, "imported image");
            imported.push(ImportedImage {
                name: image.name,
                digest: image.target.digest,
                config_digest: manifest.config.digest,
            });
        }
        Ok(imported)
    }

    /// Stores one blob, or only adds `labels` when containerd already has it.
    async fn write_blob(
        &mut self,
        descriptor: &Descriptor,
        content: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), ImportError> {
        let info = self
            .content
            .info(self.request(InfoRequest {
                digest: descriptor.digest.clone(),
            }))
            .await;
        match info {
            Ok(existing) => {
                if labels.is_empty() {
                    return Ok(());
                }
                let mut info = existing.into_inner().info.unwrap_or_default();
                let paths = labels.keys().map(|key| format!("labels.{key}")).collect();
                info.labels.extend(labels);
                let request = self.request(UpdateRequest {
                    info: Some(info),
                    update_mask: Some(prost_types::FieldMask { paths }),
                });
                self.content
                    .update(request)
                    .await
                    .map_err(containerd("Content.Update"))?;
                return Ok(());
            }
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(containerd("Content.Info")(status)),
        }
        debug!(digest = %descriptor.digest, size = descriptor.size, "writing blob");
        let reference = format!("corten-import-{}", descriptor.digest);
        let mut messages = Vec::new();
        let mut offset = 0usize;
        for chunk in content.chunks(CHUNK) {
            messages.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total: descriptor.size,
                expected: descriptor.digest.clone(),
                offset: i64::try_from(offset).unwrap_or(i64::MAX),
                data: chunk.to_vec(),
                labels: HashMap::new(),
            });
            offset += chunk.len();
        }
        messages.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total: descriptor.size,
            expected: descriptor.digest.clone(),
            offset: i64::try_from(offset).unwrap_or(i64::MAX),
            data: Vec::new(),
            labels,
        });
        let request = self.request(tokio_stream::iter(messages));
        let mut responses = match self.content.write(request).await {
            Ok(responses) => responses.into_inner(),
            // Written concurrently by someone else: it is there, which is all we need.
            Err(status) if status.code() == Code::AlreadyExists => return Ok(()),
            Err(status) => return Err(containerd("Content.Write")(status)),
        };
        loop {
            match responses.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(status) if status.code() == Code::AlreadyExists => return Ok(()),
                Err(status) => return Err(containerd("Content.Write")(status)),
            }
        }
    }

    /// Creates the image record, or points an existing one at the new target.
    async fn put_image(&mut self, name: &str, target: &Descriptor) -> Result<(), ImportError> {
        let image = Image {
            name: name.to_owned(),
            labels: HashMap::new(),
            target: Some(ProtoDescriptor {
                media_type: target.media_type.clone(),
                digest: target.digest.clone(),
                size: target.size,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let create = self.request(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        });
        match self.images.create(create).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                let update = self.request(UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".to_owned()],
                    }),
                    source_date_epoch: None,
                });
                self.images
                    .update(update)
                    .await
                    .map_err(containerd("Images.Update"))?;
                Ok(())
            }
            Err(status) => Err(containerd("Images.Create")(status)),
        }
    }
}

fn header(value: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, ImportError> {
    value
        .parse()
        .map_err(|_| ImportError::Header(value.to_owned()))
}

fn containerd(call: &'static str) -> impl Fn(tonic::Status) -> ImportError {
    move |status| ImportError::Containerd { call, status }
}

/// RFC 3339 UTC timestamp (seconds precision) as containerd's `gc.expire` label wants.
fn humantime_rfc3339(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(humantime_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_305_600 + 3_723);
        assert_eq!(humantime_rfc3339(t), "2026-11-22T01:02:03Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(humantime_rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
