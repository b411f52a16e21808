//! The lab: a cluster's nodes as network namespaces on one machine (DESIGN.md §9).
//!
//! A lab named `NAME` has a fabric namespace with a bridge, and K node namespaces, each
//! joined to the bridge by a veth (`eth0` inside the node) with the address `172.30.0.(10+i)`;
//! no namespace of the lab has a default route and the root namespace gets no route or link
//! into it, so nothing a test sends can leave the machine. Each node also has a cgroup v2
//! subtree (its processes run there; socket-LB programs attach there), its own bpffs mount,
//! and its own containerd (own root, state, sockets, runc root and CNI dirs) with the lab's
//! images imported. With [`LabSpec::control_plane`], node 0 also runs corten-server on
//! `172.30.0.10:6443` and every node runs corten-agent against it; kubectl reaches the API
//! only from inside the lab ([`Lab::kubectl`]).
//!
//! [`Lab`] tears everything down when dropped, also while a test panics; a run that was
//! killed leaves things that [`gc`] removes. Teardown finds every piece from the name alone.
mod agent;
mod binaries;
mod containerd;
mod control_plane;
mod host;
mod paths;
mod process;
mod teardown;

use std::{
    collections::BTreeSet,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub use binaries::{
    build_project_binaries, kubectl as project_kubectl, project_agent, project_cni_plugin,
    project_server, AGENT_BIN_ENV, CNI_BIN_ENV, KUBECTL_ENV, SERVER_BIN_ENV,
};
pub use containerd::{BUSYBOX_IMAGE, CORTEN_CNI, PAUSE_IMAGE};
pub use paths::{node_ip, node_name, server_url, validate_name, LabPaths, API_PORT, MAX_NODES};
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
    /// Whether node 0 runs corten-server and every node corten-agent (the binaries come
    /// from [`project_server`] and [`project_agent`]).
    pub control_plane: bool,
    /// Arguments appended to every corten-agent's command line (e.g. `--bgp-peer`), also
    /// when [`Lab::start_agent`] restarts one.
    pub extra_agent_args: Vec<String>,
    /// When set, every node's agent data directory is a tmpfs of this many MiB of its own,
    /// mounted by the lab (teardown unmounts it): the agent's node filesystem
    /// (`nodefs.*` eviction signals, emptyDirs, pod logs) then depends on nothing else that
    /// writes to the machine's disks.
    pub agent_data_dir_mib: Option<u64>,
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
            control_plane: false,
            extra_agent_args: Vec::new(),
            agent_data_dir_mib: None,
        }
    }

    /// A lab for a test with the control plane: `nodes` nodes, corten-server in node 0.
    pub fn cluster_for_test(name: &str, nodes: usize) -> Self {
        Self {
            control_plane: true,
            ..Self::for_test(name, nodes)
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
    /// Set once the control plane serves; absent in labs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    control_plane: Option<ControlPlaneState>,
    /// [`LabSpec::extra_agent_args`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    extra_agent_args: Vec<String>,
}

/// What [`Lab::attach`] needs to reach a lab's control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ControlPlaneState {
    /// The API server's URL (reachable only from inside the lab's namespaces).
    server_url: String,
    /// The admin kubeconfig on the host.
    admin_kubeconfig: PathBuf,
    /// Node `i`'s name is `node_names[i]`.
    node_names: Vec<String>,
    /// Node `i`'s kubeconfig is `node_kubeconfigs[i]`.
    node_kubeconfigs: Vec<PathBuf>,
}

/// The programs a lab with a control plane runs, found before anything is built.
#[derive(Debug)]
struct ControlPlaneBinaries {
    server: PathBuf,
    agent: PathBuf,
    kubectl: PathBuf,
}

impl ControlPlaneBinaries {
    fn find() -> anyhow::Result<Self> {
        Ok(Self {
            server: project_server()?,
            agent: project_agent()?,
            kubectl: binaries::kubectl()?,
        })
    }
}

/// How long [`Lab::up_ready`] waits for the nodes to be Ready.
pub const NODES_READY: Duration = Duration::from_secs(90);

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
    /// Builds a lab ([`Lab::up`]) and waits until every node is Ready (at most
    /// [`NODES_READY`]).
    pub fn up_ready(spec: LabSpec) -> anyhow::Result<Self> {
        let lab = Self::up(spec)?;
        lab.wait_for_nodes_ready(NODES_READY)?;
        Ok(lab)
    }

    /// Builds a lab. On failure, whatever was created is removed again.
    pub fn up(spec: LabSpec) -> anyhow::Result<Self> {
        validate_name(&spec.name)?;
        if spec.nodes == 0 || spec.nodes > MAX_NODES {
            bail!("a lab has 1 to {MAX_NODES} nodes, not {}", spec.nodes);
        }
        require_root()?;
        let binaries = if spec.control_plane {
            Some(ControlPlaneBinaries::find()?)
        } else {
            None
        };
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
                control_plane: None,
                extra_agent_args: spec.extra_agent_args.clone(),
            },
            children: Vec::new(),
            owned: true,
        };
        // On error `lab` is dropped here, which tears down the part that was built.
        lab.build(&spec)?;
        if let Some(binaries) = &binaries {
            lab.start_control_plane(binaries, spec.detach)?;
        }
        Ok(lab)
    }

    fn write_state(&self) -> anyhow::Result<()> {
        let state = serde_json::to_vec_pretty(&self.state).context("encoding lab state")?;
        fs::write(self.paths.state_file(), state).context("writing lab.json")
    }

    fn build(&mut self, spec: &LabSpec) -> anyhow::Result<()> {
        let paths = self.paths.clone();
        fs::create_dir_all(paths.run_dir()).context("creating the lab's run dir")?;
        fs::create_dir_all(paths.data_dir()).context("creating the lab's data dir")?;
        self.write_state()?;

        let fabric = paths.fabric_netns();
        host::ip(&["netns", "add", &fabric])?;
        host::ip_in(&fabric, &["link", "set", "lo", "up"])?;
        host::ip_in(&fabric, &["link", "add", "br0", "type", "bridge"])?;
        host::ip_in(&fabric, &["link", "set", "br0", "up"])?;
        for i in 0..spec.nodes {
            self.build_node(i)?;
            if let Some(mib) = spec.agent_data_dir_mib {
                agent::mount_data_dir(&paths, i, mib)?;
            }
        }
        for i in 0..spec.nodes {
            let child = containerd::start(&paths, i, spec.detach)
                .with_context(|| format!("starting containerd on node {i}"))?;
            self.children.push(child);
            containerd::import_images(&paths, i, &spec.images)?;
        }
        Ok(())
    }

    /// corten-server in node 0, then each node's kubeconfig and agent. An agent that exits
    /// does not fail this: [`Lab::check_agents`] and [`Lab::wait_for_nodes_ready`] report it.
    fn start_control_plane(
        &mut self,
        binaries: &ControlPlaneBinaries,
        detach: bool,
    ) -> anyhow::Result<()> {
        let paths = self.paths.clone();
        let server = control_plane::start_server(&paths, &binaries.server, detach)?;
        self.children.push(server);
        if let Some(server) = self.children.last_mut() {
            control_plane::wait_ready(&paths, server, &binaries.kubectl)?;
        }
        for i in 0..self.nodes() {
            control_plane::issue_node_kubeconfig(&paths, &binaries.server, i)?;
        }
        self.state.control_plane = Some(ControlPlaneState {
            server_url: server_url(),
            admin_kubeconfig: paths.admin_kubeconfig(),
            node_names: (0..self.nodes()).map(node_name).collect(),
            node_kubeconfigs: (0..self.nodes())
                .map(|i| paths.agent_kubeconfig(i))
                .collect(),
        });
        self.write_state()?;
        for i in 0..self.nodes() {
            let agent = agent::start(
                &paths,
                i,
                &binaries.agent,
                self.network(),
                &self.state.extra_agent_args,
                detach,
            )
            .with_context(|| format!("starting corten-agent on node {i}"))?;
            self.children.push(agent);
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

    /// The end of a lab test: fails if an agent stopped running (with its log), then tears
    /// the lab down and fails if anything of it is left behind.
    pub fn down_checked(self) -> anyhow::Result<()> {
        self.check_agents()?;
        let paths = self.paths.clone();
        self.down()?;
        let left = teardown::leftovers(&paths);
        if !left.is_empty() {
            bail!("left behind: {left:?}");
        }
        Ok(())
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

    /// Whether this lab runs corten-server and agents.
    pub fn has_control_plane(&self) -> bool {
        self.state.control_plane.is_some()
    }

    fn control_plane(&self) -> anyhow::Result<&ControlPlaneState> {
        self.state.control_plane.as_ref().with_context(|| {
            format!(
                "lab {} has no control plane (LabSpec::control_plane, `--control-plane`)",
                self.name()
            )
        })
    }

    /// The API server's URL; it answers only inside the lab's namespaces.
    pub fn server_url(&self) -> anyhow::Result<String> {
        Ok(self.control_plane()?.server_url.clone())
    }

    /// The admin kubeconfig (`system:masters`), for kubectl inside a node.
    pub fn admin_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        Ok(self.control_plane()?.admin_kubeconfig.clone())
    }

    /// Node `i`'s kubeconfig (`system:node:NAME`), the one its agent uses.
    pub fn node_kubeconfig(&self, i: usize) -> anyhow::Result<PathBuf> {
        self.check_node(i)?;
        self.control_plane()?
            .node_kubeconfigs
            .get(i)
            .cloned()
            .with_context(|| format!("lab.json has no kubeconfig for node {i}"))
    }

    /// Node `i`'s name in the cluster.
    pub fn node_name(&self, i: usize) -> String {
        self.state
            .control_plane
            .as_ref()
            .and_then(|cp| cp.node_names.get(i).cloned())
            .unwrap_or_else(|| node_name(i))
    }

    /// kubectl with the admin kubeconfig, inside node 0; add the arguments and run it.
    pub fn kubectl(&self) -> anyhow::Result<Command> {
        self.kubectl_with(0, &self.admin_kubeconfig()?)
    }

    /// kubectl with `kubeconfig`, inside node `i`.
    pub fn kubectl_with(&self, i: usize, kubeconfig: &Path) -> anyhow::Result<Command> {
        self.check_node(i)?;
        control_plane::kubectl(&self.paths, i, &binaries::kubectl()?, kubeconfig)
    }

    /// One message per node whose agent is not running, each with the end of its log.
    pub fn agent_failures(&self) -> Vec<String> {
        if !self.has_control_plane() {
            return Vec::new();
        }
        (0..self.nodes())
            .filter_map(|i| agent::not_running(&self.paths, i))
            .collect()
    }

    /// Kills node `i`'s agent with SIGKILL (a crash: nothing it started is cleaned up) and
    /// reaps it. Its containers keep running under the node's containerd.
    pub fn kill_agent(&mut self, i: usize) -> anyhow::Result<()> {
        self.check_node(i)?;
        let pid_file = self.paths.agent_pid_file(i);
        self.kill_and_reap(&pid_file, i, &format!("node {i}'s agent"))
    }

    /// Kills corten-server (in node 0) with SIGKILL and reaps it: the API goes away while
    /// the agents and their containers keep running.
    pub fn kill_server(&mut self) -> anyhow::Result<()> {
        self.control_plane()?;
        let pid_file = self.paths.server_pid_file();
        self.kill_and_reap(&pid_file, 0, "corten-server")
    }

    /// SIGKILLs the process `pid_file` names if it runs in node `i`'s cgroup, and reaps it
    /// when this handle started it.
    fn kill_and_reap(&mut self, pid_file: &Path, i: usize, what: &str) -> anyhow::Result<()> {
        let pid = process::running(pid_file, &self.paths.node_cgroup_path(i))
            .with_context(|| format!("{what} is not running"))?;
        host::signal(pid, libc::SIGKILL).with_context(|| format!("killing {what} ({pid})"))?;
        if let Some(at) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.swap_remove(at);
            child.wait().with_context(|| format!("reaping {what}"))?;
        }
        Ok(())
    }

    /// Starts corten-server again (after [`Lab::kill_server`]) on its data dir, and waits
    /// until it answers `/readyz`.
    pub fn start_server(&mut self) -> anyhow::Result<()> {
        self.control_plane()?;
        if process::running(
            &self.paths.server_pid_file(),
            &self.paths.node_cgroup_path(0),
        )
        .is_some()
        {
            bail!("corten-server is already running");
        }
        let binaries = ControlPlaneBinaries::find()?;
        let server = control_plane::start_server(&self.paths, &binaries.server, false)?;
        self.children.push(server);
        if let Some(server) = self.children.last_mut() {
            control_plane::wait_ready(&self.paths, server, &binaries.kubectl)?;
        }
        Ok(())
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) node `i`'s agent: a hung agent, whose sockets
    /// stay open and silent, unlike a killed one's, which the kernel closes.
    pub fn freeze_agent(&self, i: usize, frozen: bool) -> anyhow::Result<()> {
        self.check_node(i)?;
        let pid = process::running(
            &self.paths.agent_pid_file(i),
            &self.paths.node_cgroup_path(i),
        )
        .with_context(|| format!("node {i}'s agent is not running"))?;
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        host::signal(pid, signal).with_context(|| format!("signalling node {i}'s agent ({pid})"))
    }

    /// Starts node `i`'s agent again (after [`Lab::kill_agent`]), with the same flags.
    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        self.check_node(i)?;
        if agent::is_running(&self.paths, i) {
            bail!("node {i}'s agent is already running");
        }
        let child = agent::start(
            &self.paths,
            i,
            &project_agent()?,
            self.network(),
            &self.state.extra_agent_args,
            false,
        )
        .with_context(|| format!("starting corten-agent on node {i}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Fails, with the ends of their logs, if any node's agent is not running.
    pub fn check_agents(&self) -> anyhow::Result<()> {
        let failures = self.agent_failures();
        if !failures.is_empty() {
            bail!("{}", failures.join("\n\n"));
        }
        Ok(())
    }

    /// Waits until every node's Node object is Ready. Fails at once if an agent stops
    /// running (with its log), else after `timeout` naming the nodes that are not Ready.
    pub fn wait_for_nodes_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let names: BTreeSet<String> = (0..self.nodes()).map(|i| self.node_name(i)).collect();
        let deadline = Instant::now() + timeout;
        loop {
            self.check_agents()?;
            let out = self
                .kubectl()?
                .args(["get", "nodes", "-o", "json", "--request-timeout", "5s"])
                .output()
                .context("running kubectl get nodes")?;
            let waiting = if out.status.success() {
                let list: serde_json::Value =
                    serde_json::from_slice(&out.stdout).context("reading kubectl's node list")?;
                control_plane::not_ready(&list, &names)
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                control_plane::describe(&out)
            };
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nodes not Ready after {timeout:?}: {waiting}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
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
