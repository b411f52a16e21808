//! Socket-level load balancing: loads the socket programs (`connect4`, `sendmsg4`,
//! `recvmsg4`, `getpeername4`, and `bind4`, which keeps the node's own processes off the
//! ports NodePorts answer on; it learns the node's network namespace from the agent's own at
//! load), attaches them to a node's cgroup v2 directory, opens their
//! maps (pinned under the node's bpffs directory, reused when a previous run left them), and
//! brings the maps to a [`DesiredState`] by planning against what they hold and applying
//! only the difference. The tc programs for traffic from outside live in the same object and
//! read the same maps; [`SocketLb::attach_external`] hands them to `tc_nat`.
//!
//! Owns the loaded object, its attachments and the applied state. It must not compute which
//! backends a service has (callers hand it the desired state) nor lower single operations to
//! map writes (that is `maps`).
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, MapError, MapInfo, MapType},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSockAddr, Program, ProgramError,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use corten_ebpf_common::{
    maps, nat_stat, programs, AffinityKey, AffinityValue, Backend, BackendKey, FrontendKey,
    FrontendValue, MaglevKey, NatFlowKey, NatFlowValue, RevNatKey, RevNatValue, ServiceValue,
    TerminatingKey, DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FRONTENDS,
    DEFAULT_MAX_MAGLEV_ENTRIES, DEFAULT_MAX_NAT_FLOWS, DEFAULT_MAX_SERVICES,
    DEFAULT_MAX_SOCK_REV_NAT, DEFAULT_MAX_TERMINATING, MAGLEV_MAP_FLAGS,
};
use tracing::{debug, info, warn};

use super::{
    desired::DesiredState,
    diff::{self, AppliedState, BackendSelection, Operation, PlanConfig, PlanError, PlanIndex},
    index::{Changes, DesiredIndex},
    maps::{MapsError, ServiceMaps},
    object::CORTEN_EBPF,
    tc_nat::{NatStats, TcNat},
};

/// Failures of the socket-LB. Loading and attaching failures need a change on the host;
/// [`SocketLbError::Plan`] needs a bigger map; [`SocketLbError::Maps`] is retried by the next
/// sync.
#[derive(Debug, thiserror::Error)]
pub enum SocketLbError {
    /// The object could not be loaded (the kernel lacks BPF support or the caller lacks
    /// `CAP_BPF`/`CAP_SYS_ADMIN`), or a pinned map could not be opened or created.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    /// The embedded object does not carry a program or map this code expects: the agent and
    /// `ebpf/` were built from different sources.
    #[error("the embedded eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    /// The kernel refused the program (verifier) or the attachment.
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// The cgroup directory could not be opened; it must be a cgroup v2 directory.
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An attachment could not be pinned or a pinned one not replaced.
    #[error("pinned link {path}: {reason}")]
    Link { path: PathBuf, reason: String },
    /// A pinned map of another layout (left by an incompatible agent) could not be removed.
    #[error("removing the incompatible pinned map {path}: {source}")]
    StalePin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A map has the wrong type for its name (a pin left by an incompatible agent).
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// Writing or reading the maps failed; a full map is reported here, never dropped.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// No plan could be made (out of service ids).
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Map capacities (flags of the agent); the defaults come from `ebpf/common`. Maps reused
/// from pins keep the capacity they were created with.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// Entries in the frontend map.
    pub frontends: u32,
    /// Entries in the service map; also the highest service id.
    pub services: u32,
    /// Entries in the backend map.
    pub backends: u32,
    /// Entries in the Maglev map (not preallocated; each table takes its size in entries, and
    /// the kernel's hash buckets take about 16 bytes per entry of capacity up front). A pinned
    /// map of another capacity is replaced.
    pub maglev: u32,
    /// Entries in the terminating-backend map.
    pub terminating: u32,
    /// Entries in the socket reverse-NAT map (LRU).
    pub sock_rev_nat: u32,
    /// Entries in the session affinity map (LRU; one per client and affinity service).
    pub affinity: u32,
    /// Entries in the tc programs' flow map (LRU; two per flow from outside).
    pub nat_flows: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            frontends: DEFAULT_MAX_FRONTENDS,
            services: DEFAULT_MAX_SERVICES,
            backends: DEFAULT_MAX_BACKENDS,
            maglev: DEFAULT_MAX_MAGLEV_ENTRIES,
            terminating: DEFAULT_MAX_TERMINATING,
            sock_rev_nat: DEFAULT_MAX_SOCK_REV_NAT,
            affinity: DEFAULT_MAX_AFFINITY,
            nat_flows: DEFAULT_MAX_NAT_FLOWS,
        }
    }
}

/// What one [`SocketLb::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// Map operations applied.
    pub operations: usize,
    /// Backend sets reached from outside that have no Maglev table because the map is full.
    pub untabled: usize,
}

/// The cookie of this process's network namespace (the node's, where the agent runs), for
/// the bind program's NodePort protection; 0 (protection off, with a warning) if the kernel
/// cannot tell (`SO_NETNS_COOKIE` is Linux 5.14+).
#[allow(unsafe_code)]
fn own_netns_cookie() -> u64 {
    use std::os::fd::AsRawFd;
    /// `SO_NETNS_COOKIE` from the kernel's `asm-generic/socket.h`.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let cookie = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|socket| {
        let mut value: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes of the sizes given, and the socket
        // is open for the duration of the call.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut value as *mut u64).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(std::io::Error::last_os_error())
        }
    });
    match cookie {
        Ok(cookie) => cookie,
        Err(error) => {
            warn!(%error, "cannot read the network namespace cookie; NodePorts are not protected from binds");
            0
        }
    }
}

/// The loaded socket programs, their maps and what the maps hold.
pub struct SocketLb {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// Attachments pinned under `pin_dir`: they outlive this process.
    links: Vec<PinnedLink>,
    maps: ServiceMaps,
    applied: AppliedState,
    /// Lets [`SocketLb::sync_changes`] plan only changed keys; none until a full sync
    /// succeeded (and again after any failure), so that the next sync plans everything.
    index: Option<PlanIndex>,
    config: PlanConfig,
    /// The tc programs, once loaded for the first external interface.
    tc: Option<TcNat>,
}

impl std::fmt::Debug for SocketLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketLb")
            .field("frontends", &self.applied.frontends.len())
            .field("services", &self.applied.services.len())
            .finish_non_exhaustive()
    }
}

impl SocketLb {
    /// Loads the programs and opens their maps with the given capacities. With `pin_dir` (a
    /// directory on a bpffs) every map is pinned there under its name, and maps already
    /// pinned there are reused: what they hold is read back, so the first
    /// [`SocketLb::sync`] rewrites only what differs.
    pub fn load(sizes: MapSizes, pin_dir: Option<&Path>) -> Result<Self, SocketLbError> {
        let pins: Vec<(&'static str, PathBuf)> = pin_dir
            .map(|dir| {
                maps::ALL
                    .iter()
                    .map(|name| (*name, dir.join(name)))
                    .collect()
            })
            .unwrap_or_default();
        let mut loader = EbpfLoader::new();
        let netns_cookie = own_netns_cookie();
        loader
            .override_global(programs::NODE_NETNS_COOKIE, &netns_cookie, true)
            .map_max_entries(maps::FRONTENDS, sizes.frontends)
            .map_max_entries(maps::SERVICES, sizes.services)
            .map_max_entries(maps::BACKENDS, sizes.backends)
            .map_max_entries(maps::MAGLEV, sizes.maglev)
            .map_max_entries(maps::TERMINATING, sizes.terminating)
            .map_max_entries(maps::SOCK_REV_NAT, sizes.sock_rev_nat)
            .map_max_entries(maps::AFFINITY, sizes.affinity)
            .map_max_entries(maps::NAT_FLOWS, sizes.nat_flows);
        for (name, path) in &pins {
            remove_if_incompatible(name, path, &sizes)?;
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(CORTEN_EBPF)?;
        for name in programs::ALL {
            program::<CgroupSockAddr>(&mut ebpf, name)?
                .load()
                .map_err(|source| SocketLbError::Program { name, source })?;
        }
        let mut maps = ServiceMaps {
            frontends: take_map(&mut ebpf, maps::FRONTENDS)?,
            services: take_map(&mut ebpf, maps::SERVICES)?,
            backends: take_map(&mut ebpf, maps::BACKENDS)?,
            maglev: take_map(&mut ebpf, maps::MAGLEV)?,
            terminating: take_map(&mut ebpf, maps::TERMINATING)?,
        };
        let config = PlanConfig {
            // Until `set_selection` says otherwise; the socket programs pick at random anyway.
            selection: BackendSelection::Random,
            max_service_id: sizes.services,
            maglev_capacity: sizes.maglev,
        };
        let applied = maps.read_applied(config.max_service_id)?;
        if !applied.frontends.is_empty() {
            info!(
                frontends = applied.frontends.len(),
                services = applied.services.len(),
                "reusing the pinned service maps"
            );
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.map(Path::to_path_buf),
            links: Vec::new(),
            maps,
            applied,
            index: None,
            config,
            tc: None,
        })
    }

    /// How the tc programs pick backends for new flows from outside: with
    /// [`BackendSelection::Maglev`] the next [`SocketLb::sync`] writes a Maglev table for
    /// every backend set that outside clients reach (and removes tables no longer wanted,
    /// also those a previous run with other flags left in the pinned maps).
    pub fn set_selection(&mut self, selection: BackendSelection) {
        self.config.selection = selection;
        self.index = None;
    }

    /// Attaches the tc programs (ingress and egress) to an interface that traffic from
    /// outside the cluster arrives on, loading them the first time: NodePorts, externalIPs and
    /// LoadBalancer IPs then answer clients on that link. With a pin directory the attachments
    /// are pinned there (`link_<program>_<interface>`) and replace a previous run's.
    pub fn attach_external(&mut self, interface: &str) -> Result<(), SocketLbError> {
        let tc = match self.tc.take() {
            Some(tc) => tc,
            None => TcNat::load(&mut self.ebpf)?,
        };
        let attached = tc.attach(&mut self.ebpf, interface, self.pin_dir.as_deref());
        self.tc = Some(tc);
        self.links.extend(attached?);
        debug!(interface, "attached the tc programs");
        Ok(())
    }

    /// The tc programs' counters (summed over CPUs), by [`corten_ebpf_common::nat_stat`]
    /// index; `None` while no external interface is attached.
    pub fn nat_stats(&self) -> Result<Option<NatStats>, SocketLbError> {
        self.tc.as_ref().map(TcNat::stats).transpose()
    }

    /// Attaches every socket program to a cgroup v2 directory: every process in that subtree
    /// is translated, no process outside it is. Without a pin directory the programs are
    /// detached when `self` is dropped. With one, each attachment is pinned there, so the
    /// datapath keeps working while the agent is down; attachments a previous run pinned are
    /// replaced only once the new ones are in place (for a moment both run: the old program
    /// translates first, and the new one then sees a backend, not a service).
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), SocketLbError> {
        let dir = File::open(cgroup).map_err(|source| SocketLbError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        for name in programs::ALL {
            // On kernels with bpf_link (5.7+, which aya uses) a cgroup link always coexists
            // with other programs, and the kernel rejects any attach flag on it: `Single`
            // sends none.
            let program = program::<CgroupSockAddr>(&mut self.ebpf, name)?;
            let link_id = program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| SocketLbError::Program { name, source })?;
            let Some(pin_dir) = &self.pin_dir else {
                continue;
            };
            let link = program
                .take_link(link_id)
                .map_err(|source| SocketLbError::Program { name, source })?;
            self.links
                .push(pin_link(link, &pin_dir.join(format!("link_{name}")))?);
        }
        debug!(cgroup = %cgroup.display(), "attached the socket programs");
        Ok(())
    }

    /// Brings the maps to `desired`: plans against what they hold and applies only the
    /// difference, in the planner's order (the datapath is consistent after every step).
    /// After a failure the applied state is read back from the maps, so the next call
    /// repairs whatever was half written.
    pub fn sync(&mut self, desired: &DesiredState) -> Result<SyncStats, SocketLbError> {
        self.index = None;
        let plan = diff::plan(&self.applied, desired, &self.config)?;
        if !plan.untabled.is_empty() {
            warn!(
                sets = plan.untabled.len(),
                first = ?plan.untabled.first(),
                "the Maglev map is full: these Service ports pick backends at random \
                 (raise --proxy-max-maglev-entries)"
            );
        }
        self.apply_operations(&plan.operations)?;
        self.applied = plan.next;
        self.index = PlanIndex::new(&self.applied, &plan.untabled);
        Ok(SyncStats {
            operations: plan.operations.len(),
            untabled: plan.untabled.len(),
        })
    }

    /// Like [`SocketLb::sync`], but plans only the keys `changes` names (what the desired
    /// state's [`DesiredIndex`] changed since the last successful sync); the maps end up
    /// exactly as a full sync would leave them. Plans everything when `changes` says so, on
    /// the first sync and after any failure (the applied state read back from the maps
    /// needs a full plan), so a failed sync loses no change.
    pub fn sync_changes(
        &mut self,
        desired: &DesiredIndex,
        changes: &Changes,
    ) -> Result<SyncStats, SocketLbError> {
        let index = match self.index.take() {
            Some(index) if !changes.full => index,
            _ => return self.sync(desired.state()),
        };
        let plan = diff::plan_changes(
            &self.applied,
            &index,
            desired.state(),
            &changes.frontends,
            &changes.backend_sets,
            &|key| desired.reached_from_outside(key),
            &self.config,
        )?;
        if !plan.untabled().is_empty() && plan.untabled() != index.untabled_sets() {
            warn!(
                sets = plan.untabled().len(),
                first = ?plan.untabled().first(),
                "the Maglev map is full: these Service ports pick backends at random \
                 (raise --proxy-max-maglev-entries)"
            );
        }
        self.apply_operations(&plan.operations)?;
        let operations = plan.operations.len();
        let mut index = index;
        plan.commit(&mut self.applied, &mut index);
        let untabled = index.untabled_sets().len();
        self.index = Some(index);
        Ok(SyncStats {
            operations,
            untabled,
        })
    }

    /// Writes planned operations in order. On a failed write the applied state is read back
    /// from the maps (the plan no longer says what they hold) and the error returned.
    fn apply_operations(&mut self, operations: &[Operation]) -> Result<(), SocketLbError> {
        for operation in operations {
            if let Err(error) = self.maps.apply(operation, &self.applied) {
                warn!(%error, ?operation, "map write failed; reading the maps back");
                self.applied = self.maps.read_applied(self.config.max_service_id)?;
                return Err(error.into());
            }
        }
        Ok(())
    }

    /// What the maps hold, as the planner sees it.
    pub fn applied(&self) -> &AppliedState {
        &self.applied
    }
}

/// Pins `link` at `path`; a link a previous run pinned there is detached once the new one is
/// in place (for a moment both run, in attachment order).
pub(crate) fn pin_link<L>(link: L, path: &Path) -> Result<PinnedLink, SocketLbError>
where
    L: TryInto<FdLink>,
    L::Error: std::fmt::Display,
{
    let link_error = |reason: String| SocketLbError::Link {
        path: path.to_path_buf(),
        reason,
    };
    let link: FdLink = link.try_into().map_err(|e| link_error(e.to_string()))?;
    if path.exists() {
        // Dropping the unpinned old link closes its last reference: it detaches.
        let old = PinnedLink::from_pin(path).map_err(|e| link_error(e.to_string()))?;
        drop(old.unpin().map_err(|e| link_error(e.to_string()))?);
    }
    link.pin(path).map_err(|e| link_error(e.to_string()))
}

/// What a pinned map must have beyond its layout to be reused (capacity, flags): the counter
/// array exactly one entry per counter; the Maglev map no preallocation and the capacity
/// asked for, which follows the backend selection (the planner counts on it; a replaced map
/// reads back without tables, and the next sync writes them whole). Other maps keep the
/// capacity they were created with.
fn expected_shape(name: &str, sizes: &MapSizes) -> (Option<u32>, u32) {
    match name {
        maps::NAT_STATS => (Some(nat_stat::COUNT), 0),
        maps::MAGLEV => (Some(sizes.maglev), MAGLEV_MAP_FLAGS),
        _ => (None, 0),
    }
}

/// Type, key size and value size of each map, as this agent's programs use it.
fn expected_layout(name: &str) -> Option<(MapType, usize, usize)> {
    use std::mem::size_of;
    Some(match name {
        maps::FRONTENDS => (
            MapType::Hash,
            size_of::<FrontendKey>(),
            size_of::<FrontendValue>(),
        ),
        maps::SERVICES => (MapType::Hash, size_of::<u32>(), size_of::<ServiceValue>()),
        maps::BACKENDS => (MapType::Hash, size_of::<BackendKey>(), size_of::<Backend>()),
        maps::MAGLEV => (MapType::Hash, size_of::<MaglevKey>(), size_of::<u32>()),
        maps::TERMINATING => (MapType::Hash, size_of::<TerminatingKey>(), size_of::<u8>()),
        maps::SOCK_REV_NAT => (
            MapType::LruHash,
            size_of::<RevNatKey>(),
            size_of::<RevNatValue>(),
        ),
        maps::AFFINITY => (
            MapType::LruHash,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
        ),
        maps::NAT_FLOWS => (
            MapType::LruHash,
            size_of::<NatFlowKey>(),
            size_of::<NatFlowValue>(),
        ),
        maps::NAT_STATS => (MapType::PerCpuArray, size_of::<u32>(), size_of::<u64>()),
        _ => return None,
    })
}

/// A pin whose map has another layout than this agent's programs expect (an older agent's)
/// cannot be reused: the programs would not pass the verifier. It is unpinned (programs
/// still attached keep their map until they are replaced) and created afresh.
fn remove_if_incompatible(
    name: &'static str,
    path: &Path,
    sizes: &MapSizes,
) -> Result<(), SocketLbError> {
    let Ok(info) = MapInfo::from_pin(path) else {
        return Ok(()); // not pinned (yet)
    };
    let found = (
        info.map_type().ok(),
        info.key_size() as usize,
        info.value_size() as usize,
    );
    let Some((map_type, key, value)) = expected_layout(name) else {
        return Ok(());
    };
    let (entries, flags) = expected_shape(name, sizes);
    let same_shape = entries.is_none_or(|entries| info.max_entries() == entries)
        && info.map_flags() & flags == flags;
    if found == (Some(map_type), key, value) && same_shape {
        return Ok(());
    }
    warn!(
        map = name,
        ?found,
        max_entries = info.max_entries(),
        flags = info.map_flags(),
        "replacing a pinned map of another layout"
    );
    std::fs::remove_file(path).map_err(|source| SocketLbError::StalePin {
        path: path.to_path_buf(),
        source,
    })
}

/// The program `name` of the object as its type `P`.
pub(crate) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, SocketLbError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let missing = SocketLbError::Missing {
        kind: "program",
        name,
    };
    let program = ebpf.program_mut(name).ok_or(missing)?;
    program
        .try_into()
        .map_err(|source| SocketLbError::Program { name, source })
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, SocketLbError> {
    let map = ebpf
        .take_map(name)
        .ok_or(SocketLbError::Missing { kind: "map", name })?;
    HashMap::try_from(map).map_err(|source| SocketLbError::Map { map: name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_a_known_layout() {
        for name in maps::ALL {
            assert!(expected_layout(name).is_some(), "{name}");
        }
        assert_eq!(
            expected_layout(maps::AFFINITY),
            Some((MapType::LruHash, 16, 24))
        );
        assert_eq!(MapSizes::default().affinity, DEFAULT_MAX_AFFINITY);
        let sizes = MapSizes::default();
        assert_eq!(
            expected_shape(maps::NAT_STATS, &sizes),
            (Some(nat_stat::COUNT), 0)
        );
        assert_eq!(
            expected_shape(maps::MAGLEV, &sizes),
            (Some(sizes.maglev), MAGLEV_MAP_FLAGS)
        );
        assert_eq!(expected_shape(maps::FRONTENDS, &sizes), (None, 0));
    }
}
