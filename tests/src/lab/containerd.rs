//! A node's own containerd: its configuration (own root, state, sockets, runc root, CNI
//! dirs with `loopback` and, once built, `corten-cni`; the local pause image as sandbox
//! image), its start inside the node, and the import of the lab's images.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{host, paths::LabPaths};

/// The sandbox ("pause") image every node's CRI uses; `cargo xtask images` builds it.
pub const PAUSE_IMAGE: &str = "corten.local/pause:1";
/// The busybox-based test image.
pub const BUSYBOX_IMAGE: &str = "corten.local/busybox:1";
/// Where Debian's containernetworking-plugins put `loopback`, which go-cni always runs.
const HOST_CNI_BIN: &str = "/usr/lib/cni";
/// The name of corten's CNI plugin in a node's CNI bin dir.
pub const CORTEN_CNI: &str = "corten-cni";
/// How long containerd may take to serve CRI.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The containerd configuration of node `i` (TOML, config version 2).
pub fn config(paths: &LabPaths, i: usize) -> String {
    let run = paths.node_run_dir(i);
    let data = paths.node_data_dir(i);
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{data}/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # root here lacks CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj to the -998 CRI
  # asks for sandboxes; this clamps requests to containerd's own value instead.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{run}/runc"

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
"#,
        root = data.join("containerd").display(),
        state = run.join("containerd").display(),
        socket = paths.containerd_socket(i).display(),
        data = data.display(),
        run = run.display(),
        cni_bin = paths.node_cni_bin_dir(i).display(),
        cni_conf = paths.node_cni_conf_dir(i).display(),
    )
}

/// Writes node `i`'s config and CNI dirs, starts its containerd inside the node and waits
/// until CRI answers. With `detach`, containerd outlives the calling process.
pub fn start(paths: &LabPaths, i: usize, detach: bool) -> anyhow::Result<Child> {
    let data = paths.node_data_dir(i);
    let run = paths.node_run_dir(i);
    let cni_bin = paths.node_cni_bin_dir(i);
    for dir in [cni_bin.clone(), paths.node_cni_conf_dir(i), run.clone()] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let loopback = cni_bin.join("loopback");
    if !loopback.exists() {
        std::os::unix::fs::symlink(Path::new(HOST_CNI_BIN).join("loopback"), &loopback)
            .context("linking the loopback CNI plugin")?;
    }
    // corten's own plugin, when it has been built; a node runs it once a configuration in
    // its CNI conf dir names `"type": "corten-cni"`.
    let corten_cni = cni_bin.join(CORTEN_CNI);
    if let Some(plugin) = super::project_cni_plugin() {
        if fs::symlink_metadata(&corten_cni).is_err() {
            std::os::unix::fs::symlink(plugin, &corten_cni).context("linking corten-cni")?;
        }
    }
    let config_path = data.join("containerd.toml");
    fs::write(&config_path, config(paths, i)).context("writing containerd.toml")?;
    let log_path = run.join("containerd.log");
    let log = fs::File::create(&log_path).context("creating containerd.log")?;
    let mut command = Command::new("containerd");
    command
        .arg("--config")
        .arg(&config_path)
        .arg("--log-level")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log);
    host::enter(
        &mut command,
        &paths.node_netns(i),
        Some(&paths.node_cgroup2(i)),
        detach,
    )?;
    let mut child = command
        .spawn()
        .context("starting containerd (is it installed? `cargo xtask deps`)")?;
    fs::write(run.join("containerd.pid"), child.id().to_string())
        .context("writing containerd.pid")?;
    if let Err(err) = wait_ready(&paths.containerd_socket(i), &mut child, &log_path) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    Ok(child)
}

/// Polls the socket with a CRI `Version` call until it answers or the deadline passes.
fn wait_ready(socket: &Path, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("polling containerd")? {
            bail!(
                "containerd exited ({status}) before serving; its log:\n{}",
                tail(log)
            );
        }
        if socket.exists() {
            let answered = runtime.block_on(async {
                let mut client = corten_cri::runtime::CriClient::connect(socket).await?;
                client.version().await.map_err(anyhow::Error::from)
            });
            if answered.is_ok() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "containerd did not serve CRI on {} within {START_TIMEOUT:?}; its log:\n{}",
                socket.display(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Imports image archives into node `i`'s containerd (namespace `k8s.io`).
pub fn import_images(paths: &LabPaths, i: usize, archives: &[PathBuf]) -> anyhow::Result<()> {
    if archives.is_empty() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")?;
    runtime.block_on(async {
        let channel = corten_cri::connect(&paths.containerd_socket(i))
            .await
            .context("connecting to containerd")?;
        for archive in archives {
            corten_cri::import::import_archive(channel.clone(), corten_cri::K8S_NAMESPACE, archive)
                .await
                .with_context(|| format!("importing {} into node {i}", archive.display()))?;
        }
        Ok(())
    })
}

/// The last lines of a log, for error messages.
fn tail(log: &Path) -> String {
    super::process::tail(log, 20)
}
