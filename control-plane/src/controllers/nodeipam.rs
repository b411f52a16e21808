//! Node IPAM (kube-controller-manager's `nodeipam` range allocator): every Node gets a
//! `spec.podCIDR` (and `podCIDRs`) of the configured size carved from the cluster CIDR;
//! CIDRs already on nodes are taken as used at start, a deleted node's CIDR is freed.
//!
//! Owns the assignment of pod CIDRs to nodes; it must not touch anything else on a Node.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use tracing::{info, warn};

use super::runner::{run_workers, Requeue};
use crate::{
    apiserver::rest::PatchKind,
    client::{
        events::{reference_to, EventType, Recorder},
        informer::key_of,
        leader::Leadership,
        Client, ClientError, Informer, Informers, WorkQueue,
    },
};

/// A CIDR split into equal subnets, some of them in use.
#[derive(Debug, Clone)]
pub struct CidrSet {
    base: u32,
    prefix: u8,
    subnet_prefix: u8,
    used: BTreeSet<u32>,
}

/// Why a CIDR set cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// Not `a.b.c.d/n`.
    #[error("{0:?} is not an IPv4 CIDR")]
    Invalid(String),
    /// The per-node size does not fit in the cluster CIDR.
    #[error("a /{subnet} per node does not fit in the /{cluster} cluster CIDR")]
    MaskTooSmall {
        /// Cluster prefix length.
        cluster: u8,
        /// Node prefix length.
        subnet: u8,
    },
}

/// Parses `a.b.c.d/n`.
pub fn parse_cidr(text: &str) -> Result<(u32, u8), CidrError> {
    let invalid = || CidrError::Invalid(text.to_owned());
    let (address, bits) = text.split_once('/').ok_or_else(invalid)?;
    let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
    let bits: u8 = bits.parse().map_err(|_| invalid())?;
    if bits > 32 {
        return Err(invalid());
    }
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    Ok((u32::from(address) & mask, bits))
}

impl CidrSet {
    /// Subnets of `/subnet_prefix` in `cluster`.
    pub fn new(cluster: &str, subnet_prefix: u8) -> Result<Self, CidrError> {
        let (base, prefix) = parse_cidr(cluster)?;
        if subnet_prefix < prefix || subnet_prefix > 30 {
            return Err(CidrError::MaskTooSmall {
                cluster: prefix,
                subnet: subnet_prefix,
            });
        }
        Ok(Self {
            base,
            prefix,
            subnet_prefix,
            used: BTreeSet::new(),
        })
    }

    fn count(&self) -> u32 {
        1u32 << (self.subnet_prefix - self.prefix).min(31)
    }

    fn index_of(&self, cidr: &str) -> Option<u32> {
        let (address, bits) = parse_cidr(cidr).ok()?;
        if bits != self.subnet_prefix {
            return None;
        }
        let offset = address.checked_sub(self.base)?;
        let index = offset >> (32 - u32::from(self.subnet_prefix));
        (index < self.count()).then_some(index)
    }

    fn format(&self, index: u32) -> String {
        let address = self.base + (index << (32 - u32::from(self.subnet_prefix)));
        format!("{}/{}", Ipv4Addr::from(address), self.subnet_prefix)
    }

    /// Marks a CIDR used; false when it is not one of this set's subnets.
    pub fn occupy(&mut self, cidr: &str) -> bool {
        match self.index_of(cidr) {
            Some(index) => {
                self.used.insert(index);
                true
            }
            None => false,
        }
    }

    /// Frees a CIDR.
    pub fn release(&mut self, cidr: &str) {
        if let Some(index) = self.index_of(cidr) {
            self.used.remove(&index);
        }
    }

    /// The lowest free subnet, now used.
    pub fn allocate(&mut self) -> Option<String> {
        let index = (0..self.count()).find(|i| !self.used.contains(i))?;
        self.used.insert(index);
        Some(self.format(index))
    }
}

/// Starts the allocator.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
    recorder: Recorder,
    cidrs: CidrSet,
) -> Result<(), ClientError> {
    let nodes = informers.get::<Node>()?;
    let queue = WorkQueue::new();
    let cidrs = Arc::new(Mutex::new(cidrs));
    {
        let queue = queue.clone();
        let cidrs = cidrs.clone();
        let informer = nodes.clone();
        nodes.on_change(Box::new(move |old, new| match (old, new) {
            (_, Some(node)) => {
                if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
                    cidrs.lock().unwrap_or_else(|e| e.into_inner()).occupy(cidr);
                }
                queue.add(key_of(node.as_ref()));
            }
            (Some(node), None) => {
                if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
                    cidrs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .release(cidr);
                    // Nodes waiting for a CIDR may take the freed one now.
                    for waiting in informer.list() {
                        if waiting
                            .spec
                            .as_ref()
                            .and_then(|s| s.pod_cidr.as_ref())
                            .is_none()
                        {
                            queue.add(key_of(waiting.as_ref()));
                        }
                    }
                }
            }
            (None, None) => {}
        }));
    }
    let allocator = Arc::new(Allocator {
        client: client.clone(),
        nodes,
        cidrs,
        recorder,
    });
    run_workers("nodeipam", queue, leadership, 1, move |key| {
        let allocator = allocator.clone();
        async move { allocator.reconcile(&key).await }
    });
    Ok(())
}

struct Allocator {
    client: Client,
    nodes: Informer<Node>,
    cidrs: Arc<Mutex<CidrSet>>,
    recorder: Recorder,
}

impl Allocator {
    async fn reconcile(&self, name: &str) -> Result<Requeue, ClientError> {
        self.nodes.synced().await;
        let Some(node) = self.nodes.get(name) else {
            return Ok(None);
        };
        let assigned = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .is_some_and(|c| !c.is_empty());
        if assigned {
            return Ok(None);
        }
        let Some(cidr) = self
            .cidrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate()
        else {
            warn!(node = name, "the cluster CIDR is exhausted");
            self.recorder.record(
                reference_to(node.as_ref()),
                EventType::Normal,
                "CIDRNotAvailable",
                format!("Node {name} status is now: CIDRNotAvailable"),
            );
            return Ok(Some(std::time::Duration::from_secs(30)));
        };
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        let result = self
            .client
            .all::<Node>()?
            .patch(name, PatchKind::Merge, &patch)
            .await;
        match result {
            Ok(_) => {
                info!(node = name, %cidr, "assigned a pod CIDR");
                Ok(None)
            }
            Err(e) => {
                self.cidrs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .release(&cidr);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_handed_out_lowest_first_and_reused_after_release() {
        let mut set = CidrSet::new("10.42.0.0/16", 24).unwrap_or_else(|e| panic!("{e}"));
        assert!(set.occupy("10.42.0.0/24"));
        assert_eq!(set.allocate().as_deref(), Some("10.42.1.0/24"));
        assert_eq!(set.allocate().as_deref(), Some("10.42.2.0/24"));
        set.release("10.42.1.0/24");
        assert_eq!(set.allocate().as_deref(), Some("10.42.1.0/24"));
        assert!(!set.occupy("10.43.0.0/24"), "outside the cluster CIDR");
        assert!(!set.occupy("10.42.0.0/25"), "wrong size");
    }

    #[test]
    fn a_full_set_allocates_nothing() {
        let mut set = CidrSet::new("10.0.0.0/23", 24).unwrap_or_else(|e| panic!("{e}"));
        assert!(set.allocate().is_some());
        assert!(set.allocate().is_some());
        assert_eq!(set.allocate(), None);
        assert!(CidrSet::new("10.0.0.0/24", 16).is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
    }
}
