//! The lab: a cluster's nodes as network namespaces on one machine (DESIGN.md §9).
//!
//! A lab named `NAME` has a fabric namespace with a bridge, and K node namespaces, each
//! joined to the bridge by a veth (`eth0` inside the node) with the address `172.30.0.(10+i)`;
//! no namespace of the lab has a default route and the root namespace gets no route or link
//! into it, so nothing a test sends can leave the machine. Each node also has a cgroup v2
//! subtree (its processes run there; socket-LB programs attach there), its own bpffs mount,
//! and its own containerd (own root, state, sockets, runc root and CNI dirs) with the lab's
//! images imported.
//!
//! [`Lab`] tears everything down when dropped, also while a test panics; a run that was
//! killed leaves things that [`gc`] removes. Teardown finds every piece from the name alone.
mod containerd;
mod host;
mod paths;
mod teardown;

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub use containerd::{BUSYBOX_IMAGE, CORTEN_CNI, PAUSE_IMAGE};
pub use paths::{node_ip, validate_name, LabPaths, MAX_NODES};
pub use teardown::{existing_labs, gc, gc_matching, leftovers};

/// How pods on different nodes reach each other (used once the agent exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// flannel-style VXLAN overlay.
    #[default]
    Vxlan,
    /// Calico-style BGP routing.
    Bgp,
    /// Routes via the other nodes' addresses on the shared L2 fabric.
    HostGw,
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Vxlan => "vxlan",
            Self::Bgp => "bgp",
            Self::HostGw => "host-gw",
        })
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "vxlan" => Ok(Self::Vxlan),
            "bgp" => Ok(Self::Bgp),
            "host-gw" => Ok(Self::HostGw),
            other => bail!("unknown network mode {other:?} (vxlan, bgp or host-gw)"),
        }
    }
}

/// What lab to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Lab name (see [`validate_name`]).
    pub name: String,
    /// Number of nodes; node 0 is the master.
    pub nodes: usize,
    /// Pod network mode.
    pub network: NetworkMode,
    /// Image archives to import into every node's containerd.
    pub images: Vec<PathBuf>,
    /// Whether the lab's processes must outlive this process (`cargo xtask lab up`).
    pub detach: bool,
}

impl LabSpec {
    /// A lab for a test: `nodes` nodes with the project's images, torn down on drop.
    pub fn for_test(name: &str, nodes: usize) -> Self {
        Self {
            name: name.to_owned(),
            nodes,
            network: NetworkMode::default(),
            images: project_images(),
            detach: false,
        }
    }
}

/// The archives `cargo xtask images` builds (`$CORTEN_IMAGES_DIR` or `target/images`).
pub fn project_images() -> Vec<PathBuf> {
    let dir = std::env::var_os("CORTEN_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images"));
    archives_in(&dir)
}

/// The `corten-cni` binary the nodes' containerd can run: `$CORTEN_CNI_BIN`, else
/// `target/debug/corten-cni` once `cargo build -p corten-cni` has made it; `None` when
/// neither exists (the nodes then have only `loopback`).
pub fn project_cni_plugin() -> Option<PathBuf> {
    let path = std::env::var_os("CORTEN_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/corten-cni")
        });
    path.is_file().then(|| path.canonicalize().unwrap_or(path))
}

/// The `.tar` files in `dir`, sorted; none if it does not exist.
pub fn archives_in(dir: &Path) -> Vec<PathBuf> {
    let mut archives: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|ext| ext == "tar"))
                .collect()
        })
        .unwrap_or_default();
    archives.sort();
    archives
}

/// What a lab records about itself in its state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabState {
    name: String,
    nodes: usize,
    network: NetworkMode,
}

/// A running lab. Dropping it tears it down unless [`Lab::keep_running`] was called or it
/// was [`Lab::attach`]ed.
#[derive(Debug)]
pub struct Lab {
    paths: LabPaths,
    state: LabState,
    children: Vec<Child>,
    owned: bool,
}

impl Lab {
    /// Builds a lab. On failure, whatever was created is removed again.
    pub fn up(spec: LabSpec) -> anyhow::Result<Self> {
        validate_name(&spec.name)?;
        if spec.nodes == 0 || spec.nodes > MAX_NODES {
            bail!("a lab has 1 to {MAX_NODES} nodes, not {}", spec.nodes);
        }
        require_root()?;
        let paths = LabPaths::new(&spec.name);
        let left = leftovers(&paths);
        if !left.is_empty() {
            bail!(
                "lab {} already exists ({}); remove it with `cargo xtask lab down --name {}`",
                spec.name,
                left.join(", "),
                spec.name
            );
        }
        let mut lab = Self {
            paths,
            state: LabState {
                name: spec.name.clone(),
                nodes: spec.nodes,
                network: spec.network,
            },
            children: Vec::new(),
            owned: true,
        };
        // On error `lab` is dropped here, which tears down the part that was built.
        lab.build(&spec)?;
        Ok(lab)
    }

    fn build(&mut self, spec: &LabSpec) -> anyhow::Result<()> {
        let paths = self.paths.clone();
        fs::create_dir_all(paths.run_dir()).context("creating the lab's run dir")?;
        fs::create_dir_all(paths.data_dir()).context("creating the lab's data dir")?;
        let state = serde_json::to_vec_pretty(&self.state).context("encoding lab state")?;
        fs::write(paths.state_file(), state).context("writing lab.json")?;

        let fabric = paths.fabric_netns();
        host::ip(&["netns", "add", &fabric])?;
        host::ip_in(&fabric, &["link", "set", "lo", "up"])?;
        host::ip_in(&fabric, &["link", "add", "br0", "type", "bridge"])?;
        host::ip_in(&fabric, &["link", "set", "br0", "up"])?;
        for i in 0..spec.nodes {
            self.build_node(i)?;
        }
        for i in 0..spec.nodes {
            let child = containerd::start(&paths, i, spec.detach)
                .with_context(|| format!("starting containerd on node {i}"))?;
            self.children.push(child);
            containerd::import_images(&paths, i, &spec.images)?;
        }
        Ok(())
    }

    fn build_node(&self, i: usize) -> anyhow::Result<()> {
        let paths = &self.paths;
        let node = paths.node_netns(i);
        let fabric = paths.fabric_netns();
        let port = format!("n{i}");
        let address = format!("{}/24", node_ip(i));
        host::ip(&["netns", "add", &node])?;
        host::ip_in(&node, &["link", "set", "lo", "up"])?;
        // Both ends are created inside lab namespaces; neither ever exists in the root one.
        host::ip_in(
            &fabric,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node,
            ],
        )?;
        host::ip_in(&fabric, &["link", "set", &port, "master", "br0", "up"])?;
        host::ip_in(&node, &["addr", "add", &address, "dev", "eth0"])?;
        host::ip_in(&node, &["link", "set", "eth0", "up"])?;

        let cgroup = paths.node_cgroup2(i);
        fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        let bpffs = paths.node_bpffs(i);
        fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        host::run("mount", &["-t", "bpf", "bpffs", &bpffs.to_string_lossy()])?;
        Ok(())
    }

    /// Opens an existing lab (for `cargo xtask lab exec` and `down`). Dropping the handle
    /// leaves the lab running.
    pub fn attach(name: &str) -> anyhow::Result<Self> {
        validate_name(name)?;
        let paths = LabPaths::new(name);
        let text = fs::read(paths.state_file()).with_context(|| {
            format!(
                "lab {name} is not running (no {})",
                paths.state_file().display()
            )
        })?;
        let state: LabState = serde_json::from_slice(&text).context("reading lab.json")?;
        Ok(Self {
            paths,
            state,
            children: Vec::new(),
            owned: false,
        })
    }

    /// Leaves the lab running after this handle is gone.
    pub fn keep_running(mut self) {
        self.owned = false;
        self.children.clear();
    }

    /// Tears the lab down now, reporting failures (drop only logs them).
    pub fn down(mut self) -> anyhow::Result<()> {
        self.owned = false;
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        let result = teardown::teardown(&self.paths);
        for child in &mut self.children {
            // Killed by the teardown; reap so no zombie stays behind.
            let _ = child.wait();
        }
        self.children.clear();
        result
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The lab's paths.
    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.state.nodes
    }

    /// Pod network mode.
    pub fn network(&self) -> NetworkMode {
        self.state.network
    }

    /// Node `i`'s fabric address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        node_ip(i)
    }

    /// Node `i`'s network namespace name.
    pub fn node_netns(&self, i: usize) -> String {
        self.paths.node_netns(i)
    }

    /// Node `i`'s cgroup v2 directory.
    pub fn node_cgroup(&self, i: usize) -> PathBuf {
        self.paths.node_cgroup2(i)
    }

    /// Node `i`'s containerd socket.
    pub fn containerd_socket(&self, i: usize) -> PathBuf {
        self.paths.containerd_socket(i)
    }

    /// Node `i`'s bpffs mount.
    pub fn node_bpffs(&self, i: usize) -> PathBuf {
        self.paths.node_bpffs(i)
    }

    /// A command that runs inside node `i`: its network namespace and its cgroup.
    pub fn command(
        &self,
        i: usize,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        self.node_command(i, program, true)
    }

    /// A command in node `i`'s network namespace but outside its cgroup: what a process on
    /// the same host that is not part of the node sees.
    pub fn command_outside_cgroup(
        &self,
        i: usize,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        self.node_command(i, program, false)
    }

    fn node_command(
        &self,
        i: usize,
        program: impl AsRef<std::ffi::OsStr>,
        in_cgroup: bool,
    ) -> anyhow::Result<Command> {
        self.check_node(i)?;
        let cgroup = self.paths.node_cgroup2(i);
        let mut command = Command::new(program);
        let cgroup = in_cgroup.then_some(cgroup.as_path());
        host::enter(&mut command, &self.paths.node_netns(i), cgroup, false)?;
        Ok(command)
    }

    /// A command in the fabric namespace.
    pub fn fabric_command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let mut command = Command::new(program);
        host::enter(&mut command, &self.paths.fabric_netns(), None, false)?;
        Ok(command)
    }

    /// Network namespaces of the lab (fabric and nodes).
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.paths.fabric_netns()];
        all.extend((0..self.nodes()).map(|i| self.paths.node_netns(i)));
        all
    }

    fn check_node(&self, i: usize) -> anyhow::Result<()> {
        if i >= self.nodes() {
            bail!(
                "lab {} has {} nodes; there is no node {i}",
                self.name(),
                self.nodes()
            );
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            if let Err(err) = self.teardown() {
                eprintln!(
                    "lab {}: teardown failed: {err:#}; run `cargo xtask lab gc`",
                    self.name()
                );
            }
        }
    }
}

fn require_root() -> anyhow::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("the lab needs root (network namespaces, cgroups, mounts); run as root");
    }
    Ok(())
}
