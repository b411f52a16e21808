//! OCI image-layout archives: the types of `index.json`, manifests and configs that corten
//! reads and writes, and a reader for a layout packed in a tar file.
//!
//! The one definition of these wire types in the project: `cargo xtask images` writes
//! archives with them and [`crate::import`] reads them. Only what corten needs of the OCI
//! image spec is modelled; unknown fields are ignored on read.
use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Media type of an OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip-compressed layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker's manifest-list media type, accepted on read.
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's manifest media type, accepted on read.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Annotation containerd reads the image name from (as `ctr import` does).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a reference name (a tag, or a full reference).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Failures reading an archive. None is retryable: the archive itself is wrong.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The file could not be read as a tar archive.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A required file is missing from the layout.
    #[error("{path}: the layout has no {file}")]
    Missing { path: PathBuf, file: String },
    /// A JSON document of the layout does not parse.
    #[error("{path}: {file} is not a valid document: {source}")]
    Json {
        path: PathBuf,
        file: String,
        #[source]
        source: serde_json::Error,
    },
    /// A blob's content does not match its digest or size.
    #[error("{path}: blob {digest} does not match its descriptor")]
    Corrupt { path: PathBuf, digest: String },
    /// A digest that is not `sha256:<64 hex>`.
    #[error("{path}: unsupported digest {digest:?}")]
    BadDigest { path: PathBuf, digest: String },
    /// A media type this reader cannot follow.
    #[error("{path}: unsupported media type {media_type:?}")]
    MediaType { path: PathBuf, media_type: String },
    /// An index names no image for linux/amd64.
    #[error("{path}: no manifest for {platform}")]
    NoPlatform { path: PathBuf, platform: String },
}

/// A content descriptor (OCI image spec `descriptor.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of a manifest referenced from an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// Describes `content` with a media type.
    pub fn of(media_type: &str, content: &[u8]) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: sha256_digest(content),
            size: i64::try_from(content.len()).unwrap_or(i64::MAX),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// A platform (OCI image index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture, e.g. `amd64`.
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
}

/// `index.json` and image indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// [`MEDIA_TYPE_INDEX`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The images (or nested indexes).
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MEDIA_TYPE_MANIFEST`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
}

/// An image config (the parts corten writes and reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// Defaults for containers run from the image.
    #[serde(default)]
    pub config: ContainerConfig,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// Container defaults in an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `NAME=value` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Entrypoint argv.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
}

/// The `rootfs` section of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `sha256:<hex>` of each uncompressed layer, base first.
    pub diff_ids: Vec<String>,
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(content: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(content)))
}

/// One image found in an archive: its name and the descriptor of its manifest.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// Full reference, e.g. `corten.local/busybox:1`.
    pub name: String,
    /// The descriptor `index.json` gives for it (a manifest or an index).
    pub target: Descriptor,
}

/// An OCI image layout read from a tar archive, held in memory and checked.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    blobs: HashMap<String, Vec<u8>>,
    index: Index,
}

impl Archive {
    /// Reads and parses `path`; every blob's digest is verified.
    pub fn open(path: &Path) -> Result<Self, OciError> {
        let read_err = |source| OciError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut tar = tar::Archive::new(file);
        let mut blobs = HashMap::new();
        let mut index_json = None;
        for entry in tar.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .map_err(read_err)?
                .to_string_lossy()
                .into_owned();
            let name = name.trim_start_matches("./").to_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).map_err(read_err)?;
            if name == "index.json" {
                index_json = Some(content);
            } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                let digest = format!("sha256:{hex}");
                if sha256_digest(&content) != digest {
                    return Err(OciError::Corrupt {
                        path: path.to_path_buf(),
                        digest,
                    });
                }
                blobs.insert(digest, content);
            }
        }
        let index_json = index_json.ok_or_else(|| OciError::Missing {
            path: path.to_path_buf(),
            file: "index.json".to_owned(),
        })?;
        let index = parse(path, "index.json", &index_json)?;
        Ok(Self {
            path: path.to_path_buf(),
            blobs,
            index,
        })
    }

    /// The images `index.json` names, with the names containerd's `ctr import` would give
    /// them. An entry without a full reference name is skipped.
    pub fn images(&self) -> Vec<ArchiveImage> {
        self.index
            .manifests
            .iter()
            .filter_map(|descriptor| {
                let name = descriptor
                    .annotations
                    .get(ANNOTATION_CONTAINERD_NAME)
                    .or_else(|| {
                        descriptor
                            .annotations
                            .get(ANNOTATION_REF_NAME)
                            .filter(|name| name.contains('/') || name.contains(':'))
                    })?;
                Some(ArchiveImage {
                    name: name.clone(),
                    target: descriptor.clone(),
                })
            })
            .collect()
    }

    /// A blob's bytes, checked against the descriptor's size.
    pub fn blob(&self, descriptor: &Descriptor) -> Result<&[u8], OciError> {
        let blob = self
            .blobs
            .get(&descriptor.digest)
            .ok_or_else(|| OciError::Missing {
                path: self.path.clone(),
                file: format!("blob {}", descriptor.digest),
            })?;
        if i64::try_from(blob.len()).ok() != Some(descriptor.size) {
            return Err(OciError::Corrupt {
                path: self.path.clone(),
                digest: descriptor.digest.clone(),
            });
        }
        Ok(blob)
    }

    /// Follows `target` (a manifest, or an index containing a linux/amd64 manifest) to the
    /// manifest descriptor and the parsed manifest.
    pub fn resolve_manifest(
        &self,
        target: &Descriptor,
    ) -> Result<(Descriptor, Manifest), OciError> {
        match target.media_type.as_str() {
            MEDIA_TYPE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => {
                let manifest = parse(&self.path, &target.digest, self.blob(target)?)?;
                Ok((target.clone(), manifest))
            }
            MEDIA_TYPE_INDEX | MEDIA_TYPE_DOCKER_LIST => {
                let index: Index = parse(&self.path, &target.digest, self.blob(target)?)?;
                let chosen = index
                    .manifests
                    .iter()
                    .find(|m| {
                        m.platform
                            .as_ref()
                            .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
                    })
                    .ok_or_else(|| OciError::NoPlatform {
                        path: self.path.clone(),
                        platform: "linux/amd64".to_owned(),
                    })?;
                self.resolve_manifest(chosen)
            }
            other => Err(OciError::MediaType {
                path: self.path.clone(),
                media_type: other.to_owned(),
            }),
        }
    }

    /// Parses the config a manifest points at.
    pub fn config(&self, manifest: &Manifest) -> Result<ImageConfig, OciError> {
        parse(
            &self.path,
            &manifest.config.digest,
            self.blob(&manifest.config)?,
        )
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    file: &str,
    content: &[u8],
) -> Result<T, OciError> {
    serde_json::from_slice(content).map_err(|source| OciError::Json {
        path: path.to_path_buf(),
        file: file.to_owned(),
        source,
    })
}

/// `sha256:<hex>` of the chain of layers up to each diff ID, as containerd names the
/// snapshots of an unpacked image (OCI image spec, "ChainID").
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_of_one_layer_is_its_diff_id() {
        let ids = chain_ids(&["sha256:aa".to_owned()]);
        assert_eq!(ids, vec!["sha256:aa".to_owned()]);
    }

    #[test]
    fn chain_id_hashes_parent_and_diff_id() {
        let ids = chain_ids(&["sha256:aa".to_owned(), "sha256:bb".to_owned()]);
        assert_eq!(ids[1], sha256_digest(b"sha256:aa sha256:bb"));
    }

    #[test]
    fn descriptor_of_content_has_digest_and_size() {
        let d = Descriptor::of(MEDIA_TYPE_CONFIG, b"{}");
        assert_eq!(d.size, 2);
        assert_eq!(
            d.digest,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
