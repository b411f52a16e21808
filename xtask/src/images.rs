//! `cargo xtask images`: builds the OCI image-layout tarballs corten uses without a
//! registry, reproducibly (fixed timestamps and owners, sorted entries, uncompressed layers):
//! `corten.local/pause:1`, a static program that holds a sandbox, and
//! `corten.local/busybox:1`, Debian's static busybox with every applet linked.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use corten_cri::oci::{
    ContainerConfig, Descriptor, ImageConfig, Index, Manifest, RootFs, ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_MANIFEST,
};

/// Where Debian's busybox-static installs its binary.
const BUSYBOX: &str = "/bin/busybox";
/// Every timestamp in the images.
const EPOCH: &str = "1970-01-01T00:00:00Z";
/// The default PATH of both images.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `target/images` in the workspace.
pub fn default_dir() -> PathBuf {
    crate::workspace_root().join("target/images")
}

/// Builds both images into `out`; returns the archives written.
pub fn build(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let pause = compile_pause(&out.join("build"))?;
    let pause_image = ImageSpec {
        name: "corten.local/pause:1",
        files: vec![Entry::File("pause".into(), pause, 0o755)],
        config: ContainerConfig {
            env: vec![PATH_ENV.to_owned()],
            entrypoint: vec!["/pause".to_owned()],
            ..ContainerConfig::default()
        },
    };
    let busybox_image = ImageSpec {
        name: "corten.local/busybox:1",
        files: busybox_files()?,
        config: ContainerConfig {
            env: vec![PATH_ENV.to_owned()],
            cmd: vec!["sh".to_owned()],
            ..ContainerConfig::default()
        },
    };
    let mut written = Vec::new();
    for (file, image) in [("pause.tar", pause_image), ("busybox.tar", busybox_image)] {
        let path = out.join(file);
        let archive = image.archive()?;
        fs::write(&path, archive).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Compiles `xtask/images/pause.rs` into a static binary.
fn compile_pause(build_dir: &Path) -> anyhow::Result<Vec<u8>> {
    fs::create_dir_all(build_dir)?;
    let source = crate::workspace_root().join("xtask/images/pause.rs");
    let binary = build_dir.join("pause");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let remap = format!(
        "--remap-path-prefix={}=/corten",
        crate::workspace_root().display()
    );
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "pause",
            "-C",
            "opt-level=s",
        ])
        .args(["-C", "panic=abort", "-C", "target-feature=+crt-static"])
        .args(["-C", "strip=symbols", "-C", "codegen-units=1", &remap])
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .context("running rustc for pause")?;
    if !status.success() {
        bail!("compiling {} failed: {status}", source.display());
    }
    fs::read(&binary).with_context(|| format!("reading {}", binary.display()))
}

/// The busybox image's files: the binary, a link per applet, and a minimal /etc.
fn busybox_files() -> anyhow::Result<Vec<Entry>> {
    let binary = fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX} (install busybox-static: `cargo xtask deps`)")
    })?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("listing busybox applets")?;
    if !list.status.success() {
        bail!("{BUSYBOX} --list failed");
    }
    let mut files = vec![
        Entry::Dir("bin".into(), 0o755),
        Entry::File("bin/busybox".into(), binary, 0o755),
        Entry::Dir("dev".into(), 0o755),
        Entry::Dir("etc".into(), 0o755),
        Entry::File(
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
            0o644,
        ),
        Entry::File(
            "etc/group".into(),
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
            0o644,
        ),
        Entry::Dir("proc".into(), 0o755),
        Entry::Dir("root".into(), 0o700),
        Entry::Dir("sys".into(), 0o755),
        Entry::Dir("tmp".into(), 0o1777),
        Entry::Dir("var".into(), 0o755),
        Entry::Dir("var/www".into(), 0o755),
    ];
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        files.push(Entry::Symlink(
            format!("bin/{applet}"),
            "busybox".to_owned(),
        ));
    }
    Ok(files)
}

/// One filesystem entry of a layer.
enum Entry {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir(path, _) | Entry::File(path, _, _) | Entry::Symlink(path, _) => path,
        }
    }
}

/// An image to build: its name, its one layer's files, its container defaults.
struct ImageSpec {
    name: &'static str,
    files: Vec<Entry>,
    config: ContainerConfig,
}

impl ImageSpec {
    /// The OCI image layout of this image, as a tar archive.
    fn archive(self) -> anyhow::Result<Vec<u8>> {
        let layer = layer_tar(self.files)?;
        let layer_descriptor = Descriptor::of(MEDIA_TYPE_LAYER_TAR, &layer);
        let config = ImageConfig {
            created: Some(EPOCH.to_owned()),
            architecture: "amd64".to_owned(),
            os: "linux".to_owned(),
            config: self.config,
            rootfs: RootFs {
                kind: "layers".to_owned(),
                diff_ids: vec![layer_descriptor.digest.clone()],
            },
        };
        let config = serde_json::to_vec(&config)?;
        let config_descriptor = Descriptor::of(MEDIA_TYPE_CONFIG, &config);
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.to_owned()),
            config: config_descriptor,
            layers: vec![layer_descriptor],
        };
        let manifest = serde_json::to_vec(&manifest)?;
        let mut manifest_descriptor = Descriptor::of(MEDIA_TYPE_MANIFEST, &manifest);
        let tag = self.name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
        manifest_descriptor.annotations = BTreeMap::from([
            (ANNOTATION_CONTAINERD_NAME.to_owned(), self.name.to_owned()),
            (ANNOTATION_REF_NAME.to_owned(), tag.to_owned()),
        ]);
        let index = Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.to_owned()),
            manifests: vec![manifest_descriptor],
        };
        let mut blobs = BTreeMap::new();
        for blob in [layer, config, manifest] {
            let digest = Descriptor::of("", &blob).digest;
            let hex = digest.trim_start_matches("sha256:").to_owned();
            blobs.insert(hex, blob);
        }
        let mut files = vec![
            Entry::File(
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
                0o644,
            ),
            Entry::File("index.json".into(), serde_json::to_vec(&index)?, 0o644),
            Entry::Dir("blobs".into(), 0o755),
            Entry::Dir("blobs/sha256".into(), 0o755),
        ];
        for (hex, blob) in blobs {
            files.push(Entry::File(format!("blobs/sha256/{hex}"), blob, 0o644));
        }
        layer_tar(files)
    }
}

/// A tar of `entries` with fixed owners and timestamps, parents before children.
fn layer_tar(mut entries: Vec<Entry>) -> anyhow::Result<Vec<u8>> {
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::File(path, content, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(u64::try_from(content.len())?);
                builder.append_data(&mut header, path, content.as_slice())?;
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageSpec {
        ImageSpec {
            name: "corten.local/sample:1",
            files: vec![
                Entry::File("bin/x".into(), b"x".to_vec(), 0o755),
                Entry::Dir("bin".into(), 0o755),
                Entry::Symlink("bin/y".into(), "x".into()),
            ],
            config: ContainerConfig::default(),
        }
    }

    #[test]
    fn archives_are_reproducible() -> anyhow::Result<()> {
        assert_eq!(sample().archive()?, sample().archive()?);
        Ok(())
    }

    #[test]
    fn archive_reads_back_as_a_named_image() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("corten-images-test-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let path = dir.join("sample.tar");
        fs::write(&path, sample().archive()?)?;
        let archive = corten_cri::oci::Archive::open(&path)?;
        let images = archive.images();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].name, "corten.local/sample:1");
        let (_, manifest) = archive.resolve_manifest(&images[0].target)?;
        let config = archive.config(&manifest)?;
        assert_eq!(
            config.rootfs.diff_ids,
            vec![manifest.layers[0].digest.clone()]
        );
        let layer = archive.blob(&manifest.layers[0])?;
        let mut names = Vec::new();
        for entry in tar::Archive::new(layer).entries()? {
            names.push(entry?.path()?.to_string_lossy().into_owned());
        }
        assert_eq!(names, vec!["bin/", "bin/x", "bin/y"]);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
