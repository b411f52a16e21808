//! Socket-level load balancing (`cgroup/connect4`): loads the program, attaches it to a
//! node's cgroup v2 directory, and writes the service and backend maps it reads.
//!
//! Owns the two maps and the service-id allocation. It must not compute which backends a
//! service has: callers hand it the desired backends, and it writes only what changed.
use std::{
    collections::BTreeMap,
    fs::File,
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
    Ebpf, EbpfError, EbpfLoader,
};
use corten_ebpf_common::{
    maps, programs, protocol, Backend, BackendKey, ServiceKey, ServiceValue, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_SERVICES,
};
use tracing::debug;

use super::object::CORTEN_EBPF;

/// Failures of the socket-LB loader. None is retryable without a change on the host.
#[derive(Debug, thiserror::Error)]
pub enum SocketLbError {
    /// The object could not be loaded (the kernel lacks BPF support or the caller lacks
    /// `CAP_BPF`/`CAP_SYS_ADMIN`).
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
    /// A map operation failed; a full map is reported here, never dropped silently.
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// A map could not be pinned (the directory is not on a bpffs, or the name is taken).
    #[error("pinning a map at {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    /// More backends than a service can address.
    #[error("service {service} has {count} backends, more than the map can index")]
    TooManyBackends { service: SocketAddrV4, count: usize },
}

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => protocol::TCP,
            Protocol::Udp => protocol::UDP,
        }
    }
}

/// What this loader has written for one service.
#[derive(Debug)]
struct Programmed {
    id: u32,
    backends: Vec<SocketAddrV4>,
}

/// The loaded socket-LB programs and their maps.
pub struct SocketLb {
    ebpf: Ebpf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    programmed: BTreeMap<ServiceKey, Programmed>,
    next_id: u32,
}

impl std::fmt::Debug for SocketLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketLb")
            .field("services", &self.programmed.len())
            .finish_non_exhaustive()
    }
}

/// Map capacities; the defaults come from `ebpf/common`.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// Entries in the service map.
    pub services: u32,
    /// Entries in the backend map.
    pub backends: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: DEFAULT_MAX_SERVICES,
            backends: DEFAULT_MAX_BACKENDS,
        }
    }
}

impl SocketLb {
    /// Loads the programs and creates their maps, empty, with the given capacities. With
    /// `pin_dir` (a directory on a bpffs) both maps are pinned there under their names, so
    /// they outlive this process; existing pins are an error, not silently reused.
    pub fn load(sizes: MapSizes, pin_dir: Option<&Path>) -> Result<Self, SocketLbError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::SERVICES, sizes.services)
            .map_max_entries(maps::BACKENDS, sizes.backends)
            .load(CORTEN_EBPF)?;
        let program = connect4(&mut ebpf)?;
        program.load().map_err(|source| SocketLbError::Program {
            name: programs::CONNECT4,
            source,
        })?;
        let services = take_map(&mut ebpf, maps::SERVICES, pin_dir)?;
        let backends = take_map(&mut ebpf, maps::BACKENDS, pin_dir)?;
        Ok(Self {
            ebpf,
            services,
            backends,
            programmed: BTreeMap::new(),
            next_id: 1,
        })
    }

    /// Attaches `connect4` to a cgroup v2 directory: every process in that subtree is
    /// translated, no process outside it is. Detached when `self` is dropped.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), SocketLbError> {
        let dir = File::open(cgroup).map_err(|source| SocketLbError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        // On kernels with bpf_link (5.7+, which aya uses) a cgroup link always coexists with
        // other programs, and the kernel rejects any attach flag on it: `Single` sends none.
        connect4(&mut self.ebpf)?
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| SocketLbError::Program {
                name: programs::CONNECT4,
                source,
            })?;
        debug!(cgroup = %cgroup.display(), "attached connect4");
        Ok(())
    }

    /// Makes `frontend` translate to `backends` (in this order of slots). An empty list makes
    /// connects to the frontend fail at once. Writes only slots that changed.
    pub fn upsert_service(
        &mut self,
        frontend: SocketAddrV4,
        proto: Protocol,
        backends: &[SocketAddrV4],
    ) -> Result<(), SocketLbError> {
        let key = service_key(frontend, proto);
        let count = u32::try_from(backends.len()).map_err(|_| SocketLbError::TooManyBackends {
            service: frontend,
            count: backends.len(),
        })?;
        let (id, old) = match self.programmed.get(&key) {
            Some(programmed) => (programmed.id, programmed.backends.clone()),
            None => (self.allocate_id(), Vec::new()),
        };
        // New and changed slots first, then the count: the program never sees a count that
        // points past what is written.
        for (slot, backend) in (0u32..).zip(backends) {
            if old.get(slot as usize) != Some(backend) {
                self.backends
                    .insert(backend_key(id, slot), backend_value(*backend), 0)
                    .map_err(map_error(maps::BACKENDS))?;
            }
        }
        let value = ServiceValue {
            id,
            backend_count: count,
        };
        self.services
            .insert(key, value, 0)
            .map_err(map_error(maps::SERVICES))?;
        for slot in count..u32::try_from(old.len()).unwrap_or(u32::MAX) {
            remove_if_present(&mut self.backends, &backend_key(id, slot), maps::BACKENDS)?;
        }
        self.programmed.insert(
            key,
            Programmed {
                id,
                backends: backends.to_vec(),
            },
        );
        Ok(())
    }

    /// Removes a service; connects to it go to the frontend address untranslated again.
    pub fn remove_service(
        &mut self,
        frontend: SocketAddrV4,
        proto: Protocol,
    ) -> Result<(), SocketLbError> {
        let key = service_key(frontend, proto);
        let Some(programmed) = self.programmed.remove(&key) else {
            return Ok(());
        };
        remove_if_present(&mut self.services, &key, maps::SERVICES)?;
        for slot in 0..programmed.backends.len() {
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            remove_if_present(
                &mut self.backends,
                &backend_key(programmed.id, slot),
                maps::BACKENDS,
            )?;
        }
        Ok(())
    }

    fn allocate_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }
}

fn connect4(ebpf: &mut Ebpf) -> Result<&mut CgroupSockAddr, SocketLbError> {
    let missing = SocketLbError::Missing {
        kind: "program",
        name: programs::CONNECT4,
    };
    let program = ebpf.program_mut(programs::CONNECT4).ok_or(missing)?;
    program.try_into().map_err(|source| SocketLbError::Program {
        name: programs::CONNECT4,
        source,
    })
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    pin_dir: Option<&Path>,
) -> Result<HashMap<MapData, K, V>, SocketLbError> {
    let map = ebpf
        .take_map(name)
        .ok_or(SocketLbError::Missing { kind: "map", name })?;
    if let Some(dir) = pin_dir {
        let path = dir.join(name);
        map.pin(&path)
            .map_err(|source| SocketLbError::Pin { path, source })?;
    }
    HashMap::try_from(map).map_err(map_error(name))
}

fn remove_if_present<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), SocketLbError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(SocketLbError::Map { map: name, source }),
    }
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> SocketLbError {
    move |source| SocketLbError::Map { map, source }
}

fn service_key(frontend: SocketAddrV4, proto: Protocol) -> ServiceKey {
    ServiceKey::new(frontend.ip().octets(), frontend.port(), proto.number())
}

fn backend_key(service_id: u32, slot: u32) -> BackendKey {
    BackendKey { service_id, slot }
}

fn backend_value(backend: SocketAddrV4) -> Backend {
    Backend::new(backend.ip().octets(), backend.port())
}
