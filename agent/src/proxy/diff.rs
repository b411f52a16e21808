//! From the applied datapath contents and a new [`DesiredState`], the ordered minimal
//! operations that turn one into the other, and the applied state that results.
//!
//! Owns service-id allocation (ids stay with their backend set across recomputations and,
//! given what was read back from pinned maps, across agent restarts; an id is handed out again
//! only after it was released), backend slot assignment (a backend keeps its slot while it
//! stays; a freed slot is refilled instead of shifting the others) and the decision which
//! Maglev table entries change. Writes are proportional to what changed, never a full
//! rewrite; [`plan`] compares the whole state, [`plan_changes`] only the keys it is given
//! (with a [`PlanIndex`] kept between plans) and yields exactly the same operations.
//! It must not touch maps or know their layouts: an executor lowers each [`Operation`] to map
//! writes, in the given order, and the datapath stays consistent after every single step.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddrV4,
    ops::Range,
};

use super::{
    desired::{
        BackendSet, BackendSetKey, DesiredState, FrontendKey, FrontendKind, SessionAffinity,
        WhenEmpty,
    },
    maglev::{MaglevError, MaglevTable, TableSize},
};

/// Identifies one backend set in the datapath (the key of its slots and Maglev table).
/// Zero is never used, so a zeroed map value cannot name a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// How the datapath picks a backend for a new flow from outside the cluster (the tc
/// programs). Connections made on the node (socket-LB) always pick at random; session
/// affinity comes first either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendSelection {
    /// Uniformly at random over the slots; no table.
    #[default]
    Random,
    /// Maglev consistent hashing of the flow over a table of this size, written for every
    /// backend set that a NodePort, externalIP or LoadBalancer frontend sends outside clients
    /// to (sets reached only through ClusterIPs get none: the socket programs never use it).
    Maglev(TableSize),
}

/// Settings of the planner (flags of the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    /// Backend selection for every service.
    pub selection: BackendSelection,
    /// Highest service id; the service map's capacity.
    pub max_service_id: u32,
    /// Capacity of the Maglev map in entries: tables are planned only while they fit (each
    /// takes its size), so a full map never blocks other updates.
    pub maglev_capacity: u32,
}

/// Why no plan could be made. Nothing is half-planned: the applied state stays as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Every service id up to the map's capacity is in use; raise the service map size flag.
    #[error("all {capacity} service ids are in use; raise the service map size")]
    OutOfServiceIds { capacity: u32 },
    /// A backend set is too large for the Maglev table; raise the Maglev table size flag.
    #[error("Maglev table for {service:?}: {source}")]
    Maglev {
        service: BackendSetKey,
        #[source]
        source: MaglevError,
    },
}

/// Hands out service ids: first every id never used, in increasing order, then released ids
/// in the order they were released, so that an id is reused as late as possible (stale flow
/// state that still names it has the longest time to expire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdAllocator {
    next_fresh: u32,
    max: u32,
    released: VecDeque<u32>,
}

impl ServiceIdAllocator {
    /// An allocator for ids `1..=max` with none in use.
    pub fn new(max: u32) -> Self {
        Self {
            next_fresh: 1,
            max,
            released: VecDeque::new(),
        }
    }

    /// An allocator that continues after a restart: `in_use` are the ids read back from the
    /// pinned maps. Fresh ids continue above the highest of them; the gaps below it count as
    /// released.
    pub fn resume(max: u32, in_use: impl IntoIterator<Item = ServiceId>) -> Self {
        let in_use: BTreeSet<u32> = in_use.into_iter().map(|id| id.0).collect();
        let highest = in_use.iter().next_back().copied().unwrap_or(0);
        // Gaps above `max` can never be handed out, so they are not listed (this also bounds
        // the list if the maps held a nonsensical id).
        let released = (1..highest.min(max.saturating_add(1)))
            .filter(|id| !in_use.contains(id))
            .collect();
        Self {
            next_fresh: highest.saturating_add(1),
            max,
            released,
        }
    }

    fn allocate(&mut self) -> Result<ServiceId, PlanError> {
        if self.next_fresh != 0 && self.next_fresh <= self.max {
            let id = self.next_fresh;
            self.next_fresh = self.next_fresh.checked_add(1).unwrap_or(0);
            return Ok(ServiceId(id));
        }
        self.released
            .pop_front()
            .map(ServiceId)
            .ok_or(PlanError::OutOfServiceIds { capacity: self.max })
    }

    fn release(&mut self, id: ServiceId) {
        self.released.push_back(id.0);
    }
}

/// What the datapath holds for one frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppliedFrontend {
    /// Why the frontend exists (the datapath treats NodePorts and ClusterIPs differently).
    pub kind: FrontendKind,
    /// Service used for connections from outside the node (tc).
    pub from_outside: ServiceId,
    /// Service used for connections made on the node (socket-LB).
    pub from_node: ServiceId,
}

/// The per-service value the datapath reads before choosing a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceEntry {
    /// Slots `0..backend_count` hold backends.
    pub backend_count: u32,
    /// What to do with a new connection when `backend_count` is zero.
    pub when_empty: Option<WhenEmpty>,
    /// ClientIP affinity.
    pub affinity: Option<SessionAffinity>,
    /// The size of the service's Maglev table; set only while a complete table of this size
    /// is written (the service has backends and is reached from outside under Maglev).
    pub maglev: Option<TableSize>,
}

/// What the datapath holds for one service id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedService {
    /// The backend set it was written for; unknown (None) for state read back after a
    /// restart, when only frontends tie it to a set.
    pub key: Option<BackendSetKey>,
    /// Backend of each slot.
    pub slots: Vec<SocketAddrV4>,
    /// Terminating backends whose flows are kept.
    pub terminating: BTreeSet<SocketAddrV4>,
    /// The service value as written.
    pub entry: ServiceEntry,
}

/// Everything written to the datapath, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedState {
    /// Frontends.
    pub frontends: BTreeMap<FrontendKey, AppliedFrontend>,
    /// Services by id.
    pub services: BTreeMap<ServiceId, AppliedService>,
    /// The id allocator that matches `services`.
    pub ids: ServiceIdAllocator,
}

impl AppliedState {
    /// Nothing applied yet (fresh maps).
    pub fn empty(max_service_id: u32) -> Self {
        Self {
            frontends: BTreeMap::new(),
            services: BTreeMap::new(),
            ids: ServiceIdAllocator::new(max_service_id),
        }
    }

    /// The state read back from pinned maps after a restart. Set keys are unknown then; the
    /// planner recovers them through the frontends, so services keep their ids and only what
    /// really differs is rewritten.
    pub fn from_pinned(
        max_service_id: u32,
        frontends: BTreeMap<FrontendKey, AppliedFrontend>,
        services: BTreeMap<ServiceId, AppliedService>,
    ) -> Self {
        let ids = ServiceIdAllocator::resume(max_service_id, services.keys().copied());
        Self {
            frontends,
            services,
            ids,
        }
    }
}

/// One step of a plan. Executors apply them in order; each leaves the datapath consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Write one slot (insert or overwrite).
    SetBackend {
        service: ServiceId,
        slot: u32,
        backend: SocketAddrV4,
    },
    /// Write Maglev table entries `(position, slot)`; for a new table, every position.
    SetMaglevEntries {
        service: ServiceId,
        entries: Vec<(u32, u32)>,
    },
    /// Replace the set of terminating backends whose flows are kept.
    SetTerminating {
        service: ServiceId,
        backends: BTreeSet<SocketAddrV4>,
    },
    /// Insert or update the service value.
    SetService {
        service: ServiceId,
        entry: ServiceEntry,
    },
    /// Insert or update a frontend.
    SetFrontend {
        frontend: FrontendKey,
        value: AppliedFrontend,
    },
    /// Delete a frontend: connections to it are no longer translated.
    RemoveFrontend { frontend: FrontendKey },
    /// Delete one slot (beyond the service's count).
    RemoveBackend { service: ServiceId, slot: u32 },
    /// Delete the entries of a Maglev table at these positions (a whole table, or the tail
    /// of a larger one after the table size changed).
    RemoveMaglevTable {
        service: ServiceId,
        positions: Range<u32>,
    },
    /// Delete a service value (no frontend names it any more).
    RemoveService { service: ServiceId },
    /// The backend is neither active nor terminating any more: flow state (conntrack,
    /// affinity) that points to it for this service may be flushed.
    ForgetBackendFlows {
        service: ServiceId,
        backend: SocketAddrV4,
    },
}

/// The result of planning: the operations and the state after all of them succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// In execution order.
    pub operations: Vec<Operation>,
    /// Replace the applied state with this once every operation succeeded. After a failure,
    /// keep the old state and plan again: the operations are idempotent.
    pub next: AppliedState,
    /// Backend sets reached from outside that get no Maglev table because the Maglev map
    /// cannot hold another one: their new flows pick at random.
    pub untabled: Vec<BackendSetKey>,
}

/// Plans the change from `applied` to `desired`.
pub fn plan(
    applied: &AppliedState,
    desired: &DesiredState,
    config: &PlanConfig,
) -> Result<Plan, PlanError> {
    let mut ids = applied.ids.clone();
    let assigned = assign_ids(applied, desired, &mut ids)?;

    let (tabled, untabled) = tabled_sets(applied, desired, config, &assigned);
    let mut phases = Phases::default();
    let mut services = BTreeMap::new();
    for (key, set) in &desired.backend_sets {
        let Some(&id) = assigned.get(key) else {
            continue;
        };
        let table_size = table_size(config, &tabled, key);
        let next = phases.service(id, key, set, applied.services.get(&id), table_size)?;
        services.insert(id, next);
    }

    let mut frontends = BTreeMap::new();
    for (key, frontend) in &desired.frontends {
        let (Some(&from_outside), Some(&from_node)) = (
            assigned.get(&frontend.from_outside),
            assigned.get(&frontend.from_node),
        ) else {
            continue;
        };
        let value = AppliedFrontend {
            kind: frontend.kind,
            from_outside,
            from_node,
        };
        if applied.frontends.get(key) != Some(&value) {
            phases.frontend_sets.push(Operation::SetFrontend {
                frontend: *key,
                value,
            });
        }
        frontends.insert(*key, value);
    }
    phases.frontend_removals.extend(
        applied
            .frontends
            .keys()
            .filter(|key| !frontends.contains_key(key))
            .map(|key| Operation::RemoveFrontend { frontend: *key }),
    );

    // The services the frontends that stay name until they are set anew; collected only
    // when some service goes (a full plan of a large state usually removes none).
    let mut named: Option<BTreeSet<ServiceId>> = None;
    for (id, old) in &applied.services {
        if services.contains_key(id) {
            continue;
        }
        let named = named.get_or_insert_with(|| {
            applied
                .frontends
                .iter()
                .filter(|(key, _)| frontends.contains_key(key))
                .flat_map(|(_, old)| [old.from_outside, old.from_node])
                .collect()
        });
        phases.remove_service(*id, old, named.contains(id));
        ids.release(*id);
    }

    Ok(Plan {
        operations: phases.into_operations(),
        next: AppliedState {
            frontends,
            services,
            ids,
        },
        untabled,
    })
}

/// A plan's operations by phase, in the order they are applied: frontends removed, services
/// removed that no remaining frontend names, what new and changed services add, frontends
/// set, what changed services shed, services removed that a frontend named until it was set
/// anew. A frontend never names a service before its entries are written, nor after they go.
/// What goes is removed before anything new is written, so that a map at its capacity can
/// still take a Service that replaces another in the same sync.
#[derive(Default)]
struct Phases {
    frontend_removals: Vec<Operation>,
    early_removals: Vec<Operation>,
    additions: Vec<Operation>,
    frontend_sets: Vec<Operation>,
    shrinking: Vec<Operation>,
    removals: Vec<Operation>,
}

impl Phases {
    /// Plans one service that stays or comes (see [`plan_service`]).
    fn service(
        &mut self,
        id: ServiceId,
        key: &BackendSetKey,
        set: &BackendSet,
        old: Option<&AppliedService>,
        table_size: Option<TableSize>,
    ) -> Result<AppliedService, PlanError> {
        plan_service(
            id,
            key,
            set,
            old,
            table_size,
            &mut self.additions,
            &mut self.shrinking,
        )
    }

    /// Plans the removal of service `id`: early, or last when a frontend that stays names
    /// it until the frontend sets point it elsewhere.
    fn remove_service(&mut self, id: ServiceId, old: &AppliedService, named: bool) {
        let removals = if named {
            &mut self.removals
        } else {
            &mut self.early_removals
        };
        push_service_removal(id, old, removals);
    }

    fn into_operations(self) -> Vec<Operation> {
        let mut operations = self.frontend_removals;
        operations.extend(self.early_removals);
        operations.extend(self.additions);
        operations.extend(self.frontend_sets);
        operations.extend(self.shrinking);
        operations.extend(self.removals);
        operations
    }
}

/// The Maglev table size of a backend set: the configured one when the set is tabled.
fn table_size(
    config: &PlanConfig,
    tabled: &BTreeSet<&BackendSetKey>,
    key: &BackendSetKey,
) -> Option<TableSize> {
    match config.selection {
        BackendSelection::Maglev(size) if tabled.contains(key) => Some(size),
        _ => None,
    }
}

/// The operations that remove service `id` (no frontend names it any more).
fn push_service_removal(id: ServiceId, old: &AppliedService, removals: &mut Vec<Operation>) {
    removals.push(Operation::RemoveService { service: id });
    if let Some(size) = old.entry.maglev {
        removals.push(Operation::RemoveMaglevTable {
            service: id,
            positions: 0..size.get(),
        });
    }
    for slot in 0..old.slots.len() {
        removals.push(Operation::RemoveBackend {
            service: id,
            slot: slot_number(slot),
        });
    }
    for backend in old.slots.iter().chain(&old.terminating) {
        removals.push(Operation::ForgetBackendFlows {
            service: id,
            backend: *backend,
        });
    }
}
/// What the planner keeps between plans so that it can plan only changed keys: the id of
/// each applied backend set, the Maglev entries written and the sets left without a table.
/// Valid only for the [`AppliedState`] it was made or last committed with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanIndex {
    ids: HashMap<BackendSetKey, ServiceId>,
    maglev_written: u64,
    untabled: BTreeSet<BackendSetKey>,
}

impl PlanIndex {
    /// The index of `applied` after a full plan left `untabled` without tables; none when
    /// some applied service's set is unknown (state read back from the maps), since only a
    /// full [`plan`] can match those to sets.
    pub fn new(applied: &AppliedState, untabled: &[BackendSetKey]) -> Option<Self> {
        let mut ids = HashMap::with_capacity(applied.services.len());
        let mut maglev_written = 0;
        for (id, service) in &applied.services {
            ids.insert(service.key.clone()?, *id);
            maglev_written += service.entry.maglev.map_or(0, |size| u64::from(size.get()));
        }
        Some(Self {
            ids,
            maglev_written,
            untabled: untabled.iter().cloned().collect(),
        })
    }

    /// The backend sets reached from outside that had no room for a Maglev table.
    pub fn untabled_sets(&self) -> &BTreeSet<BackendSetKey> {
        &self.untabled
    }
}

/// A plan for some keys only (see [`plan_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePlan {
    /// In execution order; the same operations a full [`plan`] would give.
    pub operations: Vec<Operation>,
    frontends: Vec<(FrontendKey, Option<AppliedFrontend>)>,
    services: Vec<(ServiceId, Option<AppliedService>)>,
    ids: ServiceIdAllocator,
    untabled: BTreeSet<BackendSetKey>,
}

impl ChangePlan {
    /// Backend sets reached from outside that get no Maglev table (the map is full).
    pub fn untabled(&self) -> &BTreeSet<BackendSetKey> {
        &self.untabled
    }

    /// Records in `applied` and `index` that every operation succeeded. After a failure,
    /// do not commit: read the maps back and make a full [`plan`].
    pub fn commit(self, applied: &mut AppliedState, index: &mut PlanIndex) {
        for (key, value) in self.frontends {
            match value {
                Some(value) => applied.frontends.insert(key, value),
                None => applied.frontends.remove(&key),
            };
        }
        for (id, service) in self.services {
            let old = match service {
                Some(service) => {
                    index.maglev_written +=
                        service.entry.maglev.map_or(0, |size| u64::from(size.get()));
                    if let Some(key) = &service.key {
                        index.ids.insert(key.clone(), id);
                    }
                    applied.services.insert(id, service)
                }
                None => applied.services.remove(&id),
            };
            if let Some(old) = old {
                index.maglev_written = index
                    .maglev_written
                    .saturating_sub(old.entry.maglev.map_or(0, |size| u64::from(size.get())));
                if let Some(key) = old.key {
                    if index.ids.get(&key) == Some(&id) {
                        // Still the key's id unless the set was removed.
                        if !applied.services.contains_key(&id) {
                            index.ids.remove(&key);
                        }
                    }
                }
            }
        }
        applied.ids = self.ids;
        index.untabled = self.untabled;
    }
}

/// Plans the change from `applied` to `desired` for the given keys only: `frontends` and
/// `sets` must hold every key whose desired value differs from what was last planned, and
/// every set whose frontends changed (`reached_from_outside` says whether a frontend sends
/// outside clients to a set now). The operations, and the state after [`ChangePlan::commit`],
/// are exactly those of a full [`plan`]; work is proportional to the keys given.
pub fn plan_changes(
    applied: &AppliedState,
    index: &PlanIndex,
    desired: &DesiredState,
    frontends: &BTreeSet<FrontendKey>,
    sets: &BTreeSet<BackendSetKey>,
    reached_from_outside: &dyn Fn(&BackendSetKey) -> bool,
    config: &PlanConfig,
) -> Result<ChangePlan, PlanError> {
    let mut ids = applied.ids.clone();
    // Sets without a table are looked at again each time: a removed table may make room.
    let sets: BTreeSet<&BackendSetKey> = sets.iter().chain(&index.untabled).collect();
    let mut assigned: BTreeMap<&BackendSetKey, ServiceId> = BTreeMap::new();
    for key in &sets {
        if let (true, Some(id)) = (desired.backend_sets.contains_key(*key), index.ids.get(*key)) {
            assigned.insert(key, *id);
        }
    }
    for key in &sets {
        if desired.backend_sets.contains_key(*key) && !assigned.contains_key(key) {
            assigned.insert(key, ids.allocate()?);
        }
    }

    // Tables, as `tabled_sets` decides them for the whole state.
    let mut tabled: BTreeSet<&BackendSetKey> = BTreeSet::new();
    let mut untabled = BTreeSet::new();
    if let BackendSelection::Maglev(size) = config.selection {
        let mut room = u64::from(config.maglev_capacity).saturating_sub(index.maglev_written);
        for key in &sets {
            let wanted = desired
                .backend_sets
                .get(*key)
                .is_some_and(|set| !set.active.is_empty())
                && reached_from_outside(key);
            if !wanted {
                continue;
            }
            let table = assigned
                .get(key)
                .and_then(|id| applied.services.get(id))
                .and_then(|service| service.entry.maglev);
            if table == Some(size) {
                tabled.insert(key);
            }
        }
        for key in &sets {
            let wanted = desired
                .backend_sets
                .get(*key)
                .is_some_and(|set| !set.active.is_empty())
                && reached_from_outside(key);
            if !wanted || tabled.contains(key) {
                continue;
            }
            let table = assigned
                .get(key)
                .and_then(|id| applied.services.get(id))
                .and_then(|service| service.entry.maglev);
            if table == Some(size) {
                continue;
            }
            if room >= u64::from(size.get()) {
                room -= u64::from(size.get());
                tabled.insert(key);
            } else {
                untabled.insert((*key).clone());
            }
        }
    }

    let mut phases = Phases::default();
    let mut services = Vec::new();
    let mut removed = BTreeMap::new();
    for key in &sets {
        match (desired.backend_sets.get(*key), assigned.get(key)) {
            (Some(set), Some(&id)) => {
                let table_size = table_size(config, &tabled, key);
                let next = phases.service(id, key, set, applied.services.get(&id), table_size)?;
                services.push((id, Some(next)));
            }
            _ => {
                if let Some(id) = index.ids.get(*key) {
                    if let Some(old) = applied.services.get(id) {
                        removed.insert(*id, old);
                    }
                }
            }
        }
    }

    let id_of = |key: &BackendSetKey| assigned.get(key).or_else(|| index.ids.get(key)).copied();
    let mut frontend_changes = Vec::new();
    // The services the frontends that stay name until they are set anew.
    let mut named = BTreeSet::new();
    for key in frontends {
        let value = desired.frontends.get(key).and_then(|frontend| {
            Some(AppliedFrontend {
                kind: frontend.kind,
                from_outside: id_of(&frontend.from_outside)?,
                from_node: id_of(&frontend.from_node)?,
            })
        });
        let old = applied.frontends.get(key);
        if let (Some(_), Some(old)) = (value, old) {
            named.extend([old.from_outside, old.from_node]);
        }
        match value {
            Some(value) if old != Some(&value) => {
                phases.frontend_sets.push(Operation::SetFrontend {
                    frontend: *key,
                    value,
                });
                frontend_changes.push((*key, Some(value)));
            }
            Some(_) => {}
            None if old.is_some() => {
                phases
                    .frontend_removals
                    .push(Operation::RemoveFrontend { frontend: *key });
                frontend_changes.push((*key, None));
            }
            None => {}
        }
    }

    for (id, old) in removed {
        phases.remove_service(id, old, named.contains(&id));
        ids.release(id);
        services.push((id, None));
    }

    Ok(ChangePlan {
        operations: phases.into_operations(),
        frontends: frontend_changes,
        services,
        ids,
        untabled,
    })
}

/// The backend sets that get a Maglev table, and those that would but do not fit. Tables
/// serve only the tc programs, so only sets with backends that a NodePort, externalIP or
/// LoadBalancer frontend sends outside clients to get one. Sets that already have a table of
/// the configured size keep it; new tables are planned only while the Maglev map has room for
/// them next to every table written now (removed ones free their room after this plan).
fn tabled_sets<'a>(
    applied: &AppliedState,
    desired: &'a DesiredState,
    config: &PlanConfig,
    assigned: &BTreeMap<BackendSetKey, ServiceId>,
) -> (BTreeSet<&'a BackendSetKey>, Vec<BackendSetKey>) {
    let BackendSelection::Maglev(size) = config.selection else {
        return (BTreeSet::new(), Vec::new());
    };
    let wanted: BTreeSet<&BackendSetKey> = desired
        .frontends
        .values()
        .filter(|frontend| frontend.kind.is_external())
        .map(|frontend| &frontend.from_outside)
        .filter(|key| {
            desired
                .backend_sets
                .get(*key)
                .is_some_and(|set| !set.active.is_empty())
        })
        .collect();
    let table_of = |key: &BackendSetKey| {
        assigned
            .get(key)
            .and_then(|id| applied.services.get(id))
            .and_then(|service| service.entry.maglev)
    };
    let (kept, new): (BTreeSet<_>, BTreeSet<_>) = wanted
        .into_iter()
        .partition(|key| table_of(key) == Some(size));
    let written: u64 = applied
        .services
        .values()
        .filter_map(|service| service.entry.maglev)
        .map(|size| u64::from(size.get()))
        .sum();
    let mut room = u64::from(config.maglev_capacity).saturating_sub(written);
    let mut tabled = kept;
    let mut untabled = Vec::new();
    for key in new {
        if room >= u64::from(size.get()) {
            room -= u64::from(size.get());
            tabled.insert(key);
        } else {
            untabled.push(key.clone());
        }
    }
    (tabled, untabled)
}

/// Gives every desired backend set an id: the id it had (known set key), else the id that its
/// frontends pointed to (state read back after a restart), else a new one.
fn assign_ids(
    applied: &AppliedState,
    desired: &DesiredState,
    ids: &mut ServiceIdAllocator,
) -> Result<BTreeMap<BackendSetKey, ServiceId>, PlanError> {
    let mut assigned: BTreeMap<BackendSetKey, ServiceId> = BTreeMap::new();
    let mut claimed: BTreeSet<ServiceId> = BTreeSet::new();
    for (id, service) in &applied.services {
        if let Some(key) = &service.key {
            if desired.backend_sets.contains_key(key) && !assigned.contains_key(key) {
                assigned.insert(key.clone(), *id);
                claimed.insert(*id);
            }
        }
    }
    for (frontend_key, frontend) in &desired.frontends {
        let Some(old) = applied.frontends.get(frontend_key) else {
            continue;
        };
        for (set_key, old_id) in [
            (&frontend.from_node, old.from_node),
            (&frontend.from_outside, old.from_outside),
        ] {
            let unknown_owner = applied
                .services
                .get(&old_id)
                .is_some_and(|service| service.key.is_none());
            if unknown_owner && !assigned.contains_key(set_key) && !claimed.contains(&old_id) {
                assigned.insert(set_key.clone(), old_id);
                claimed.insert(old_id);
            }
        }
    }
    for key in desired.backend_sets.keys() {
        if !assigned.contains_key(key) {
            assigned.insert(key.clone(), ids.allocate()?);
        }
    }
    Ok(assigned)
}

/// Plans one service: its slots, Maglev entries (with `table_size`, while it has backends),
/// terminating set and value. Writes go to `additions` (before frontends change), slot and
/// table deletions and flow flushes to `shrinking` (after).
fn plan_service(
    id: ServiceId,
    key: &BackendSetKey,
    set: &BackendSet,
    old: Option<&AppliedService>,
    table_size: Option<TableSize>,
    additions: &mut Vec<Operation>,
    shrinking: &mut Vec<Operation>,
) -> Result<AppliedService, PlanError> {
    let old_slots: &[SocketAddrV4] = old.map(|o| o.slots.as_slice()).unwrap_or_default();
    let slots = assign_slots(old_slots, &set.active);
    for (slot, backend) in slots.iter().enumerate() {
        if old_slots.get(slot) != Some(backend) {
            additions.push(Operation::SetBackend {
                service: id,
                slot: slot_number(slot),
                backend: *backend,
            });
        }
    }
    let maglev = table_size.filter(|_| !slots.is_empty());
    let old_maglev = old.and_then(|o| o.entry.maglev);
    let mut table_update = None;
    match (old_maglev, maglev) {
        (None, None) => {}
        // No table any more (no backends, no frontend from outside, or Maglev turned off):
        // the service value stops naming it first.
        (Some(old_size), None) => shrinking.push(Operation::RemoveMaglevTable {
            service: id,
            positions: 0..old_size.get(),
        }),
        (old_size, Some(size)) => {
            let maglev_error = |source| PlanError::Maglev {
                service: key.clone(),
                source,
            };
            // Only the changed entries of a table of the same size; a new or resized table is
            // written whole.
            let unchanged = old_size == Some(size) && slots == old_slots;
            if !unchanged {
                let new_table = slot_table(size, &slots).map_err(maglev_error)?;
                let old_table = if old_size == Some(size) {
                    slot_table(size, old_slots).map_err(maglev_error)?
                } else {
                    slot_table(size, &[]).map_err(maglev_error)?
                };
                table_update = Some(Operation::SetMaglevEntries {
                    service: id,
                    entries: changed_entries(&old_table, &new_table),
                });
            }
            if let Some(old_size) = old_size.filter(|old_size| old_size.get() > size.get()) {
                shrinking.push(Operation::RemoveMaglevTable {
                    service: id,
                    positions: size.get()..old_size.get(),
                });
            }
        }
    }
    let terminating = set.terminating.clone();
    let old_terminating = old.map(|o| o.terminating.clone()).unwrap_or_default();
    if old_terminating != terminating {
        additions.push(Operation::SetTerminating {
            service: id,
            backends: terminating.clone(),
        });
    }
    let entry = ServiceEntry {
        backend_count: slot_number(slots.len()),
        when_empty: set.when_empty,
        affinity: set.affinity,
        maglev,
    };
    let service_update = (old.map(|o| o.entry) != Some(entry))
        .then_some(Operation::SetService { service: id, entry });
    // While the value names a table, the table must be complete and point below the count: a
    // growing service raises its count before its table points at the new slots; a new,
    // resized or shrinking table is written before the value names it (or lowers the count).
    let growing = old_maglev == maglev && !old_slots.is_empty() && slots.len() > old_slots.len();
    let (first, second) = if growing {
        (service_update, table_update)
    } else {
        (table_update, service_update)
    };
    additions.extend(first);
    additions.extend(second);
    for slot in slots.len()..old_slots.len() {
        shrinking.push(Operation::RemoveBackend {
            service: id,
            slot: slot_number(slot),
        });
    }
    if let Some(old) = old {
        let gone = old
            .slots
            .iter()
            .chain(&old.terminating)
            .filter(|b| !set.active.contains(b) && !terminating.contains(b))
            .collect::<BTreeSet<_>>();
        shrinking.extend(
            gone.into_iter()
                .map(|backend| Operation::ForgetBackendFlows {
                    service: id,
                    backend: *backend,
                }),
        );
    }
    Ok(AppliedService {
        key: Some(key.clone()),
        slots,
        terminating,
        entry,
    })
}

/// New slot layout: staying backends keep their slots, new backends fill freed slots first,
/// then go to the end; if more left than came, the last slots move into the holes so that
/// slots stay `0..count`.
fn assign_slots(old: &[SocketAddrV4], active: &BTreeSet<SocketAddrV4>) -> Vec<SocketAddrV4> {
    let mut slots: Vec<Option<SocketAddrV4>> = old
        .iter()
        .map(|backend| active.contains(backend).then_some(*backend))
        .collect();
    let staying: BTreeSet<SocketAddrV4> = slots.iter().flatten().copied().collect();
    let mut newcomers = active.difference(&staying).copied();
    for slot in slots.iter_mut().filter(|slot| slot.is_none()) {
        match newcomers.next() {
            Some(backend) => *slot = Some(backend),
            None => break,
        }
    }
    slots.extend(newcomers.map(Some));
    // Close the remaining holes with the last slots. Bounded: every pass shortens the vector.
    loop {
        while slots.last().is_some_and(Option::is_none) {
            slots.pop();
        }
        let Some(hole) = slots.iter().position(Option::is_none) else {
            break;
        };
        slots.swap_remove(hole);
    }
    slots.into_iter().flatten().collect()
}

/// The Maglev table of `slots`, each entry a slot number.
fn slot_table(size: TableSize, slots: &[SocketAddrV4]) -> Result<MaglevTable, MaglevError> {
    let keys: Vec<String> = slots.iter().map(SocketAddrV4::to_string).collect();
    MaglevTable::build(size, &keys)
}

fn changed_entries(old: &MaglevTable, new: &MaglevTable) -> Vec<(u32, u32)> {
    new.entries()
        .iter()
        .enumerate()
        .filter(|(position, slot)| old.entries().get(*position) != Some(slot))
        .map(|(position, slot)| (slot_number(position), *slot))
        .collect()
}

/// Slot and table positions are bounded by the Maglev table size and by map capacities, all
/// `u32`; saturate rather than wrap if that were ever violated.
fn slot_number(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::proxy::{
        desired::{BackendScope, Frontend, FrontendAddress, ServicePortRef, ServiceRef},
        Protocol,
    };

    const MAX_IDS: u32 = 1000;

    fn maglev_config() -> PlanConfig {
        PlanConfig {
            selection: BackendSelection::Maglev(
                TableSize::new(251).unwrap_or_else(|e| panic!("{e}")),
            ),
            max_service_id: MAX_IDS,
            maglev_capacity: 251 * 100,
        }
    }

    fn random_config() -> PlanConfig {
        PlanConfig {
            selection: BackendSelection::Random,
            max_service_id: MAX_IDS,
            maglev_capacity: 0,
        }
    }

    fn set_key(name: &str) -> BackendSetKey {
        BackendSetKey {
            port: ServicePortRef {
                service: ServiceRef {
                    namespace: "default".into(),
                    name: name.into(),
                },
                port_name: String::new(),
                protocol: Protocol::Tcp,
            },
            scope: BackendScope::Cluster,
        }
    }

    fn frontend_key(last_octet: u8) -> FrontendKey {
        FrontendKey {
            address: FrontendAddress::Ip(Ipv4Addr::new(10, 43, 0, last_octet)),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    /// Service a's frontend .1 of `kind` with a traffic policy Local: its node-local set
    /// holds backend 2 only.
    fn only_local(kind: FrontendKind) -> DesiredState {
        let mut local = set_key("a");
        local.scope = BackendScope::NodeLocal;
        let mut state = DesiredState::default();
        state.frontends.insert(
            frontend_key(1),
            Frontend {
                kind,
                from_outside: local.clone(),
                from_node: local.clone(),
            },
        );
        state.backend_sets.insert(
            local,
            BackendSet {
                active: BTreeSet::from([backend(2)]),
                ..BackendSet::default()
            },
        );
        state
    }

    fn backend(last_octet: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 42, 0, last_octet), 8080)
    }

    /// A LoadBalancer service per `(name, ingress IP last octet, backend last octets)`
    /// (reached from outside, so it gets a Maglev table under Maglev).
    fn desired(services: &[(&str, u8, &[u8])]) -> DesiredState {
        desired_with_kind(services, FrontendKind::LoadBalancer)
    }

    fn desired_with_kind(services: &[(&str, u8, &[u8])], kind: FrontendKind) -> DesiredState {
        let mut state = DesiredState::default();
        for (name, vip, backends) in services {
            let key = set_key(name);
            state.frontends.insert(
                frontend_key(*vip),
                Frontend {
                    kind,
                    from_outside: key.clone(),
                    from_node: key.clone(),
                },
            );
            state.backend_sets.insert(
                key,
                BackendSet {
                    active: backends.iter().map(|b| backend(*b)).collect(),
                    when_empty: backends.is_empty().then_some(WhenEmpty::Reject),
                    ..BackendSet::default()
                },
            );
        }
        state
    }

    fn plan_ok(applied: &AppliedState, desired: &DesiredState, config: &PlanConfig) -> Plan {
        plan(applied, desired, config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn id_of(state: &AppliedState, vip: u8) -> ServiceId {
        state
            .frontends
            .get(&frontend_key(vip))
            .map(|f| f.from_node)
            .unwrap_or_else(|| panic!("no frontend .{vip}"))
    }

    /// The maps as an executor would hold them, to check plans by applying them.
    #[derive(Debug, Default)]
    struct FakeMaps {
        frontends: BTreeMap<FrontendKey, AppliedFrontend>,
        services: BTreeMap<ServiceId, ServiceEntry>,
        slots: BTreeMap<(ServiceId, u32), SocketAddrV4>,
        tables: BTreeMap<ServiceId, BTreeMap<u32, u32>>,
        terminating: BTreeMap<ServiceId, BTreeSet<SocketAddrV4>>,
        forgotten: Vec<(ServiceId, SocketAddrV4)>,
    }

    impl FakeMaps {
        fn apply(&mut self, operation: &Operation) {
            match operation {
                Operation::SetBackend {
                    service,
                    slot,
                    backend,
                } => {
                    self.slots.insert((*service, *slot), *backend);
                }
                Operation::SetMaglevEntries { service, entries } => {
                    self.tables
                        .entry(*service)
                        .or_default()
                        .extend(entries.iter().copied());
                }
                Operation::SetTerminating { service, backends } => {
                    self.terminating.insert(*service, backends.clone());
                }
                Operation::SetService { service, entry } => {
                    self.services.insert(*service, *entry);
                }
                Operation::SetFrontend { frontend, value } => {
                    self.frontends.insert(*frontend, *value);
                }
                Operation::RemoveFrontend { frontend } => {
                    self.frontends.remove(frontend);
                }
                Operation::RemoveBackend { service, slot } => {
                    self.slots.remove(&(*service, *slot));
                }
                Operation::RemoveMaglevTable { service, positions } => {
                    if let Some(table) = self.tables.get_mut(service) {
                        table.retain(|position, _| !positions.contains(position));
                        if table.is_empty() {
                            self.tables.remove(service);
                        }
                    }
                }
                Operation::RemoveService { service } => {
                    self.services.remove(service);
                    self.terminating.remove(service);
                }
                Operation::ForgetBackendFlows { service, backend } => {
                    self.forgotten.push((*service, *backend));
                }
            }
        }

        /// What the datapath needs after every single step: each frontend names services
        /// that exist, whose slots `0..count` exist and whose table points inside them.
        fn assert_consistent(&self, after: &Operation) {
            for (key, frontend) in &self.frontends {
                for id in [frontend.from_node, frontend.from_outside] {
                    let entry = self
                        .services
                        .get(&id)
                        .unwrap_or_else(|| panic!("after {after:?}: {key:?} names missing {id:?}"));
                    for slot in 0..entry.backend_count {
                        assert!(
                            self.slots.contains_key(&(id, slot)),
                            "after {after:?}: {id:?} slot {slot} missing"
                        );
                    }
                    if let Some(size) = entry.maglev {
                        assert!(
                            entry.backend_count > 0,
                            "after {after:?}: empty {id:?} has a table"
                        );
                        let table = self.tables.get(&id).cloned().unwrap_or_default();
                        let positions: Vec<u32> = table.keys().copied().collect();
                        assert!(
                            (0..size.get()).all(|p| table.contains_key(&p)),
                            "after {after:?}: table of {id:?} incomplete ({} of {size})",
                            positions.len()
                        );
                        assert!(
                            table.values().all(|slot| *slot < entry.backend_count),
                            "after {after:?}: table of {id:?} points past its slots"
                        );
                    }
                }
            }
        }

        /// The maps must hold exactly what the planned state says.
        fn assert_matches(&self, state: &AppliedState) {
            assert_eq!(self.frontends, state.frontends);
            let services: BTreeMap<_, _> = state
                .services
                .iter()
                .map(|(id, s)| (*id, s.entry))
                .collect();
            assert_eq!(self.services, services);
            let slots: BTreeMap<_, _> = state
                .services
                .iter()
                .flat_map(|(id, s)| {
                    s.slots
                        .iter()
                        .enumerate()
                        .map(move |(slot, b)| ((*id, slot_number(slot)), *b))
                })
                .collect();
            assert_eq!(self.slots, slots);
            for (id, service) in &state.services {
                let actual: Vec<u32> = self
                    .tables
                    .get(id)
                    .map(|t| t.values().copied().collect())
                    .unwrap_or_default();
                let expected = match service.entry.maglev {
                    Some(size) => slot_table(size, &service.slots)
                        .unwrap_or_else(|e| panic!("{e}"))
                        .entries()
                        .to_vec(),
                    None => Vec::new(),
                };
                assert_eq!(actual, expected, "table of {id:?}");
            }
            assert!(self.tables.keys().all(|id| state.services.contains_key(id)));
        }

        fn run(&mut self, plan: &Plan) {
            for operation in &plan.operations {
                self.apply(operation);
                self.assert_consistent(operation);
            }
            self.assert_matches(&plan.next);
        }
    }

    #[test]
    fn first_plan_writes_everything_and_second_nothing() {
        let config = maglev_config();
        let desired = desired(&[("a", 1, &[1, 2, 3]), ("b", 2, &[4])]);
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &desired, &config);
        let mut maps = FakeMaps::default();
        maps.run(&first);
        let count = |f: fn(&Operation) -> bool| first.operations.iter().filter(|o| f(o)).count();
        assert_eq!(count(|o| matches!(o, Operation::SetBackend { .. })), 4);
        assert_eq!(count(|o| matches!(o, Operation::SetService { .. })), 2);
        assert_eq!(count(|o| matches!(o, Operation::SetFrontend { .. })), 2);
        assert_eq!(
            count(|o| matches!(o, Operation::SetMaglevEntries { .. })),
            2
        );
        assert_eq!(id_of(&first.next, 1), ServiceId(1));
        assert_eq!(id_of(&first.next, 2), ServiceId(2));

        let again = plan_ok(&first.next, &desired, &config);
        assert_eq!(again.operations, Vec::new());
        assert_eq!(again.next, first.next);
    }

    #[test]
    fn removing_a_backend_touches_only_its_service() {
        let config = maglev_config();
        let before = desired(&[("a", 1, &[1, 2, 3, 4]), ("b", 2, &[5, 6])]);
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &before, &config);
        let mut maps = FakeMaps::default();
        maps.run(&first);
        let a = id_of(&first.next, 1);

        let after = desired(&[("a", 1, &[1, 3, 4]), ("b", 2, &[5, 6])]);
        let second = plan_ok(&first.next, &after, &config);
        maps.run(&second);
        // The last backend moves into the freed slot 1; nothing else is rewritten.
        let slot_ops: Vec<_> = second
            .operations
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Operation::SetBackend { .. } | Operation::RemoveBackend { .. }
                )
            })
            .collect();
        assert_eq!(
            slot_ops,
            vec![
                &Operation::SetBackend {
                    service: a,
                    slot: 1,
                    backend: backend(4)
                },
                &Operation::RemoveBackend {
                    service: a,
                    slot: 3
                },
            ]
        );
        assert_eq!(
            first.next.services[&a].slots[0],
            second.next.services[&a].slots[0]
        );
        assert!(second.operations.iter().all(|o| match o {
            Operation::SetBackend { service, .. }
            | Operation::SetMaglevEntries { service, .. }
            | Operation::SetService { service, .. }
            | Operation::RemoveBackend { service, .. }
            | Operation::ForgetBackendFlows { service, .. } => *service == a,
            _ => false,
        }));
        assert!(second.operations.contains(&Operation::ForgetBackendFlows {
            service: a,
            backend: backend(2)
        }));
        // Only a part of the table changes: the removed backend's entries and the moved
        // backend's (it changed slot), a few more at most.
        let changed = second
            .operations
            .iter()
            .find_map(|o| match o {
                Operation::SetMaglevEntries { entries, .. } => Some(entries.len()),
                _ => None,
            })
            .unwrap_or(0);
        assert!(
            changed > 0 && changed < 251 * 3 / 4,
            "{changed} entries changed"
        );
    }

    #[test]
    fn terminating_backend_leaves_slots_but_keeps_flows() {
        let config = random_config();
        let before = desired(&[("a", 1, &[1, 2])]);
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &before, &config);
        let mut after = desired(&[("a", 1, &[1])]);
        if let Some(set) = after.backend_sets.get_mut(&set_key("a")) {
            set.terminating.insert(backend(2));
        }
        let second = plan_ok(&first.next, &after, &config);
        let a = id_of(&first.next, 1);
        assert_eq!(
            second.operations,
            vec![
                Operation::SetTerminating {
                    service: a,
                    backends: BTreeSet::from([backend(2)])
                },
                Operation::SetService {
                    service: a,
                    entry: ServiceEntry {
                        backend_count: 1,
                        when_empty: None,
                        affinity: None,
                        maglev: None,
                    }
                },
                Operation::RemoveBackend {
                    service: a,
                    slot: 1
                },
            ]
        );
        // Once it is gone entirely its flows may be forgotten.
        let third = plan_ok(&second.next, &desired(&[("a", 1, &[1])]), &config);
        assert!(third.operations.contains(&Operation::ForgetBackendFlows {
            service: a,
            backend: backend(2)
        }));
    }

    #[test]
    fn service_without_backends_keeps_its_entry_with_zero_count() {
        let config = maglev_config();
        let first = plan_ok(
            &AppliedState::empty(MAX_IDS),
            &desired(&[("a", 1, &[1])]),
            &config,
        );
        let mut maps = FakeMaps::default();
        maps.run(&first);
        let second = plan_ok(&first.next, &desired(&[("a", 1, &[])]), &config);
        maps.run(&second);
        let a = id_of(&second.next, 1);
        assert_eq!(
            maps.services
                .get(&a)
                .map(|e| (e.backend_count, e.when_empty)),
            Some((0, Some(WhenEmpty::Reject)))
        );
        assert!(second.operations.contains(&Operation::RemoveMaglevTable {
            service: a,
            positions: 0..251
        }));
        assert!(maps.frontends.contains_key(&frontend_key(1)));
    }

    #[test]
    fn affinity_change_updates_only_the_service_value() {
        let config = maglev_config();
        let before = desired(&[("a", 1, &[1, 2])]);
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &before, &config);
        let mut after = before.clone();
        if let Some(set) = after.backend_sets.get_mut(&set_key("a")) {
            set.affinity = Some(SessionAffinity {
                timeout_seconds: 60,
            });
        }
        let second = plan_ok(&first.next, &after, &config);
        assert_eq!(second.operations.len(), 1);
        assert!(matches!(
            second.operations[0],
            Operation::SetService {
                entry: ServiceEntry {
                    affinity: Some(_),
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn adding_and_removing_services_keeps_other_ids() {
        let config = maglev_config();
        let mut applied = AppliedState::empty(MAX_IDS);
        let mut maps = FakeMaps::default();
        let step = |applied: &mut AppliedState, maps: &mut FakeMaps, d: &DesiredState| {
            let p = plan_ok(applied, d, &config);
            maps.run(&p);
            *applied = p.next.clone();
            p
        };
        step(
            &mut applied,
            &mut maps,
            &desired(&[("a", 1, &[1]), ("b", 2, &[2])]),
        );
        let b = id_of(&applied, 2);
        let removed = step(&mut applied, &mut maps, &desired(&[("b", 2, &[2])]));
        assert!(removed.operations.contains(&Operation::RemoveFrontend {
            frontend: frontend_key(1)
        }));
        assert!(removed.operations.contains(&Operation::RemoveService {
            service: ServiceId(1)
        }));
        assert_eq!(id_of(&applied, 2), b);
        // A new service gets a fresh id, not the one just released.
        let added = step(
            &mut applied,
            &mut maps,
            &desired(&[("b", 2, &[2]), ("c", 3, &[3])]),
        );
        assert_eq!(id_of(&applied, 2), b);
        assert_eq!(id_of(&applied, 3), ServiceId(3));
        assert!(added.operations.iter().all(|o| !matches!(
            o,
            Operation::SetBackend { service, .. } if *service == b
        )));
    }

    #[test]
    fn ids_are_reused_only_after_release_and_in_release_order() {
        let mut ids = ServiceIdAllocator::new(3);
        let allocated: Vec<_> = (0..3).map(|_| ids.allocate()).collect();
        assert_eq!(
            allocated,
            vec![Ok(ServiceId(1)), Ok(ServiceId(2)), Ok(ServiceId(3))]
        );
        assert_eq!(
            ids.allocate(),
            Err(PlanError::OutOfServiceIds { capacity: 3 })
        );
        ids.release(ServiceId(2));
        ids.release(ServiceId(1));
        assert_eq!(ids.allocate(), Ok(ServiceId(2)));
        assert_eq!(ids.allocate(), Ok(ServiceId(1)));
        assert!(ids.allocate().is_err());

        let mut resumed = ServiceIdAllocator::resume(10, [ServiceId(2), ServiceId(5)]);
        let next: Vec<_> = (0..8).map(|_| resumed.allocate()).collect();
        let expected: Vec<_> = [6, 7, 8, 9, 10, 1, 3, 4]
            .into_iter()
            .map(|id| Ok(ServiceId(id)))
            .collect();
        assert_eq!(next, expected);
        assert!(resumed.allocate().is_err());
    }

    #[test]
    fn full_id_space_is_an_error_not_a_partial_plan() {
        let config = PlanConfig {
            max_service_id: 1,
            ..random_config()
        };
        let result = plan(
            &AppliedState::empty(1),
            &desired(&[("a", 1, &[1]), ("b", 2, &[2])]),
            &config,
        );
        assert_eq!(
            result.map(|p| p.operations.len()),
            Err(PlanError::OutOfServiceIds { capacity: 1 })
        );
    }

    /// What an agent reads back from pinned maps: everything but the set keys.
    fn read_back(state: &AppliedState) -> AppliedState {
        let services = state
            .services
            .iter()
            .map(|(id, service)| {
                let mut service = service.clone();
                service.key = None;
                (*id, service)
            })
            .collect();
        AppliedState::from_pinned(MAX_IDS, state.frontends.clone(), services)
    }

    #[test]
    fn restart_with_pinned_ids_changes_nothing_that_did_not_change() {
        let config = maglev_config();
        let d = desired(&[("a", 1, &[1, 2]), ("b", 2, &[3]), ("c", 3, &[])]);
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &d, &config);
        let restarted = plan_ok(&read_back(&first.next), &d, &config);
        assert_eq!(restarted.operations, Vec::new());
        assert_eq!(restarted.next.frontends, first.next.frontends);

        // A change made while the agent was down touches only that service.
        let changed = desired(&[("a", 1, &[1, 2]), ("b", 2, &[3, 4]), ("c", 3, &[])]);
        let mut maps = FakeMaps::default();
        maps.run(&first);
        let after_restart = plan_ok(&read_back(&first.next), &changed, &config);
        maps.run(&after_restart);
        let b = id_of(&first.next, 2);
        assert_eq!(id_of(&after_restart.next, 2), b);
        assert!(after_restart.operations.iter().all(|o| match o {
            Operation::SetBackend { service, .. }
            | Operation::SetMaglevEntries { service, .. }
            | Operation::SetService { service, .. } => *service == b,
            _ => false,
        }));
        // New services after the restart never get an id that is still in use.
        let more = desired(&[
            ("a", 1, &[1, 2]),
            ("b", 2, &[3]),
            ("c", 3, &[]),
            ("d", 4, &[5]),
        ]);
        let grown = plan_ok(&read_back(&first.next), &more, &config);
        assert_eq!(id_of(&grown.next, 4), ServiceId(4));
    }

    #[test]
    fn policy_change_fills_the_new_set_before_the_frontend_moves_and_removes_the_old() {
        let config = maglev_config();
        let before = desired(&[("a", 1, &[1, 2])]);
        let mut maps = FakeMaps::default();
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &before, &config);
        maps.run(&first);
        let cluster = id_of(&first.next, 1);

        // internalTrafficPolicy: Local; only backend 2 is on this node.
        let after = only_local(FrontendKind::ClusterIp);
        let second = plan_ok(&first.next, &after, &config);
        maps.run(&second);
        let local_id = id_of(&second.next, 1);
        assert_ne!(local_id, cluster);
        // The new set is complete before the frontend points to it; the old one goes after.
        let position = |wanted: &Operation| second.operations.iter().position(|o| o == wanted);
        let frontend_moved = second
            .operations
            .iter()
            .position(|o| matches!(o, Operation::SetFrontend { .. }));
        assert!(position(&Operation::RemoveService { service: cluster }) > frontend_moved);
        assert!(second
            .operations
            .iter()
            .take(frontend_moved.unwrap_or(0))
            .any(|o| matches!(o, Operation::SetService { service, .. } if *service == local_id)));
    }

    #[test]
    fn a_replaced_service_goes_before_its_successor_is_written() {
        // A Service removed and another added in one sync: no map holds more entries at any
        // step than before or after the plan, so a map at its capacity takes the new one.
        let config = maglev_config();
        let before = desired(&[("a", 1, &[1, 2]), ("b", 2, &[3])]);
        let after = desired(&[("b", 2, &[3]), ("c", 3, &[4, 5])]);
        let mut maps = FakeMaps::default();
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &before, &config);
        maps.run(&first);
        let sizes = |maps: &FakeMaps| {
            [
                maps.frontends.len(),
                maps.services.len(),
                maps.slots.len(),
                maps.tables.values().map(BTreeMap::len).sum(),
            ]
        };
        let start = sizes(&maps);
        assert!(start[3] > 0, "the sets have no Maglev tables to count");
        let second = plan_ok(&first.next, &after, &config);
        let mut peak = start;
        for operation in &second.operations {
            maps.apply(operation);
            maps.assert_consistent(operation);
            for (peak, size) in peak.iter_mut().zip(sizes(&maps)) {
                *peak = (*peak).max(size);
            }
        }
        maps.assert_matches(&second.next);
        let end = sizes(&maps);
        for (map, ((peak, start), end)) in ["frontends", "services", "slots", "table entries"]
            .iter()
            .zip(peak.iter().zip(start).zip(end))
        {
            assert!(
                *peak <= start.max(end),
                "{map}: {peak} entries at once, {start} before and {end} after"
            );
        }
    }

    #[test]
    fn a_set_a_staying_frontend_still_names_goes_only_after_it_is_re_pointed() {
        // Two frontends of one set; one goes, the other moves to a new (node-local) set.
        // The first is removed before anything else, the old set only after the move.
        let config = maglev_config();
        let mut before = desired(&[("a", 1, &[1, 2])]);
        let second_frontend = before.frontends[&frontend_key(1)].clone();
        before.frontends.insert(frontend_key(2), second_frontend);
        let mut maps = FakeMaps::default();
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &before, &config);
        maps.run(&first);
        let old = id_of(&first.next, 1);
        assert_eq!(id_of(&first.next, 2), old);

        let after = only_local(FrontendKind::LoadBalancer);
        let second = plan_ok(&first.next, &after, &config);
        maps.run(&second);
        let position = |wanted: &dyn Fn(&Operation) -> bool| {
            second
                .operations
                .iter()
                .position(wanted)
                .unwrap_or_else(|| panic!("missing from {:?}", second.operations))
        };
        let removed = position(&|o| {
            *o == Operation::RemoveFrontend {
                frontend: frontend_key(2),
            }
        });
        let moved = position(
            &|o| matches!(o, Operation::SetFrontend { frontend, .. } if *frontend == frontend_key(1)),
        );
        let gone = position(&|o| *o == Operation::RemoveService { service: old });
        assert_eq!(removed, 0, "{:?}", second.operations);
        assert!(moved < gone, "{:?}", second.operations);
    }

    #[test]
    fn random_selection_writes_no_tables() {
        let config = random_config();
        let first = plan_ok(
            &AppliedState::empty(MAX_IDS),
            &desired(&[("a", 1, &[1, 2, 3])]),
            &config,
        );
        let mut maps = FakeMaps::default();
        maps.run(&first);
        let second = plan_ok(&first.next, &desired(&[("a", 1, &[2, 3, 4])]), &config);
        maps.run(&second);
        assert!(maps.tables.is_empty());
    }

    #[test]
    fn only_sets_reached_from_outside_get_tables() {
        let config = maglev_config();
        let mut d = desired_with_kind(&[("a", 1, &[1, 2])], FrontendKind::ClusterIp);
        let node_port = desired_with_kind(&[("b", 2, &[3])], FrontendKind::NodePort);
        d.frontends.extend(node_port.frontends);
        d.backend_sets.extend(node_port.backend_sets);
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &d, &config);
        let mut maps = FakeMaps::default();
        maps.run(&first);
        let (a, b) = (id_of(&first.next, 1), id_of(&first.next, 2));
        assert_eq!(first.next.services[&a].entry.maglev, None);
        assert_eq!(
            first.next.services[&b].entry.maglev,
            TableSize::new(251).ok()
        );
        assert_eq!(maps.tables.keys().collect::<Vec<_>>(), vec![&b]);
    }

    #[test]
    fn tables_that_do_not_fit_leave_their_sets_random_until_room_is_made() {
        let config = PlanConfig {
            maglev_capacity: 251 * 2,
            ..maglev_config()
        };
        let three = desired(&[("a", 1, &[1]), ("b", 2, &[2]), ("c", 3, &[3])]);
        let mut maps = FakeMaps::default();
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &three, &config);
        maps.run(&first);
        assert_eq!(first.untabled, vec![set_key("c")]);
        assert_eq!(maps.tables.len(), 2);
        let c = id_of(&first.next, 3);
        assert_eq!(first.next.services[&c].entry.maglev, None);
        // Planning again changes nothing while there is no room.
        let again = plan_ok(&first.next, &three, &config);
        assert_eq!(again.operations, Vec::new());
        // "a" goes: its table is removed after this plan, and "c" gets one in the next.
        let two = desired(&[("b", 2, &[2]), ("c", 3, &[3])]);
        let second = plan_ok(&first.next, &two, &config);
        maps.run(&second);
        assert_eq!(second.untabled, vec![set_key("c")]);
        let third = plan_ok(&second.next, &two, &config);
        maps.run(&third);
        assert!(third.untabled.is_empty());
        assert_eq!(
            third.next.services[&c].entry.maglev,
            TableSize::new(251).ok()
        );
        assert_eq!(maps.tables.len(), 2);
    }

    #[test]
    fn switching_selection_or_table_size_at_restart_rewrites_tables_in_order() {
        let size = |n| TableSize::new(n).unwrap_or_else(|e| panic!("{e}"));
        let with = |selection| PlanConfig {
            selection,
            max_service_id: MAX_IDS,
            maglev_capacity: 509 * 4,
        };
        let d = desired(&[("a", 1, &[1, 2, 3])]);
        let mut maps = FakeMaps::default();
        let mut applied = AppliedState::empty(MAX_IDS);
        // Every step restarts the agent with other flags; `run` checks the datapath after
        // every single operation (a value never names an incomplete table).
        let mut step = |selection| {
            let p = plan_ok(&read_back(&applied), &d, &with(selection));
            maps.run(&p);
            applied = p.next.clone();
            (
                p,
                maps.tables.values().map(BTreeMap::len).collect::<Vec<_>>(),
            )
        };
        let (_, tables) = step(BackendSelection::Random);
        assert_eq!(tables, Vec::<usize>::new());
        let (_, tables) = step(BackendSelection::Maglev(size(251)));
        assert_eq!(tables, vec![251]);
        let (_, tables) = step(BackendSelection::Maglev(size(509)));
        assert_eq!(tables, vec![509]);
        let (smaller, tables) = step(BackendSelection::Maglev(size(251)));
        assert_eq!(tables, vec![251]);
        assert!(smaller.operations.contains(&Operation::RemoveMaglevTable {
            service: ServiceId(1),
            positions: 251..509
        }));
        let (off, tables) = step(BackendSelection::Random);
        assert_eq!(tables, Vec::<usize>::new());
        let position = |f: fn(&Operation) -> bool| off.operations.iter().position(f);
        assert!(
            position(|o| matches!(o, Operation::SetService { .. }))
                < position(|o| matches!(o, Operation::RemoveMaglevTable { .. }))
        );
    }

    #[test]
    fn an_incomplete_table_read_back_is_written_whole_before_it_is_named() {
        let config = maglev_config();
        let d = desired(&[("a", 1, &[1, 2])]);
        let first = plan_ok(&AppliedState::empty(MAX_IDS), &d, &config);
        // `maps` reads a service whose table is incomplete as one without a table.
        let mut back = read_back(&first.next);
        for service in back.services.values_mut() {
            service.entry.maglev = None;
        }
        let again = plan_ok(&back, &d, &config);
        let written = again.operations.iter().position(
            |o| matches!(o, Operation::SetMaglevEntries { entries, .. } if entries.len() == 251),
        );
        let named = again
            .operations
            .iter()
            .position(|o| matches!(o, Operation::SetService { .. }));
        assert!(
            written.is_some() && written < named,
            "{:?}",
            again.operations
        );
        assert_eq!(
            again.next.services[&ServiceId(1)].entry,
            first.next.services[&ServiceId(1)].entry
        );
    }

    #[test]
    fn slot_assignment_keeps_staying_backends_in_place() {
        let old = [backend(1), backend(2), backend(3), backend(4)];
        let set = |list: &[u8]| list.iter().map(|b| backend(*b)).collect::<BTreeSet<_>>();
        // Replace 2 by 9: 9 takes slot 1.
        assert_eq!(
            assign_slots(&old, &set(&[1, 3, 4, 9])),
            vec![backend(1), backend(9), backend(3), backend(4)]
        );
        // Remove 1 and 3: the last one fills slot 0, the trailing hole goes.
        assert_eq!(
            assign_slots(&old, &set(&[2, 4])),
            vec![backend(4), backend(2)]
        );
        // Add two: appended in address order.
        assert_eq!(
            assign_slots(&old[..2], &set(&[1, 2, 7, 5])),
            vec![backend(1), backend(2), backend(5), backend(7)]
        );
        assert_eq!(assign_slots(&old, &set(&[])), Vec::<SocketAddrV4>::new());
    }

    #[test]
    fn long_random_sequence_keeps_maps_consistent_after_every_step() {
        // A fixed pseudo-random walk over service and backend changes; after every single
        // operation the fake maps must be usable, and after every plan exact.
        let config = maglev_config();
        let mut applied = AppliedState::empty(MAX_IDS);
        let mut maps = FakeMaps::default();
        let mut seed: u64 = 0x5eed;
        let mut next = move |bound: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % bound
        };
        let names = ["a", "b", "c", "d", "e", "f"];
        for _round in 0..60 {
            let mut services: Vec<(&str, u8, Vec<u8>)> = Vec::new();
            for (index, name) in names.iter().enumerate() {
                if next(4) == 0 {
                    continue; // this service is absent in this round
                }
                let backends = (1..=20u8).filter(|_| next(3) == 0).collect();
                services.push((name, u8::try_from(index + 1).unwrap_or(0), backends));
            }
            let view: Vec<(&str, u8, &[u8])> = services
                .iter()
                .map(|(n, v, b)| (*n, *v, b.as_slice()))
                .collect();
            let p = plan_ok(&applied, &desired(&view), &config);
            maps.run(&p);
            // Planning again from the result is always empty.
            assert_eq!(
                plan_ok(&p.next, &desired(&view), &config).operations,
                Vec::new()
            );
            applied = p.next;
        }
        assert!(applied.services.len() <= names.len());
    }
}
