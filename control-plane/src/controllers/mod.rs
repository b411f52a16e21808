//! The controllers (DESIGN.md §6) and the wiring that runs them with the scheduler inside
//! corten-server: one [`Informers`] factory for the process (the scheduler and every
//! controller share its caches), two Lease elections
//! (`kube-system/kube-scheduler` and `kube-system/kube-controller-manager`, as upstream), and
//! a worker pool per controller that only takes keys while this process leads.
//!
//! Each controller is a file: it registers informer handlers that enqueue keys, and a
//! reconcile function that reads the caches and writes through the API. Controllers must
//! not share state except through the API and the informers' caches.
pub mod claim;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod expectations;
pub mod garbagecollector;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod pods;
pub mod replicaset;
pub mod resourcequota;
pub mod runner;
pub mod serviceaccount;
pub mod statefulset;

use std::time::Duration;

use crate::{
    apiserver::rest::Rest,
    client::{
        events::Recorder,
        leader::{self, ElectionConfig},
        Client, ClientError, Informers,
    },
    scheduler::{self, SchedulerConfig},
};

/// How the scheduler and controllers run (corten-server's flags).
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// This process's identity in Leases and events (unique per process).
    pub identity: String,
    /// How long a leader Lease lasts without renewal.
    pub lease_duration: Duration,
    /// How long a leader tries to renew before it stops leading.
    pub renew_deadline: Duration,
    /// How often candidates retry.
    pub retry_period: Duration,
    /// Whether to run the scheduler.
    pub scheduler: bool,
    /// Whether to run the controllers.
    pub controllers: bool,
    /// The cluster CIDR pod CIDRs are carved from.
    pub cluster_cidr: String,
    /// The prefix length of each node's pod CIDR.
    pub node_cidr_mask_size: u8,
    /// How long a node may go without a heartbeat before it is marked Unknown.
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked.
    pub node_monitor_period: Duration,
}

impl ControlPlaneOptions {
    /// Upstream's defaults for an identity.
    pub fn new(identity: String) -> Self {
        Self {
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            scheduler: true,
            controllers: true,
            cluster_cidr: "10.42.0.0/16".to_owned(),
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(50),
            node_monitor_period: Duration::from_secs(5),
        }
    }

    fn election(&self, name: &str) -> ElectionConfig {
        ElectionConfig {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            ..ElectionConfig::new(name, &self.identity)
        }
    }
}

/// Starts the scheduler and the controllers in the background.
pub fn start(rest: &Rest, options: &ControlPlaneOptions) -> Result<(), ClientError> {
    // One cache per resource for the whole process: the scheduler and the controllers read
    // the same pods and nodes (informers only read, so the reader's name does not matter).
    let informers = Informers::new(Client::new(rest.clone(), "informers"));
    if options.scheduler {
        let client = Client::new(rest.clone(), "kube-scheduler");
        let leadership = leader::campaign(&client, options.election("kube-scheduler"))?;
        let config = SchedulerConfig {
            identity: options.identity.clone(),
            ..SchedulerConfig::default()
        };
        scheduler::start(&client, &informers, config, leadership)?;
    }
    if options.controllers {
        let client = Client::new(rest.clone(), "kube-controller-manager");
        let leadership = leader::campaign(&client, options.election("kube-controller-manager"))?;
        let recorder =
            |component: &'static str| Recorder::new(client.clone(), component, &options.identity);
        replicaset::start(
            &client,
            &informers,
            leadership.clone(),
            recorder("replicaset-controller"),
        )?;
        deployment::start(
            &client,
            &informers,
            leadership.clone(),
            recorder("deployment-controller"),
        )?;
        daemonset::start(
            &client,
            &informers,
            leadership.clone(),
            recorder("daemonset-controller"),
        )?;
        statefulset::start(
            &client,
            &informers,
            leadership.clone(),
            recorder("statefulset-controller"),
        )?;
        job::start(
            &client,
            &informers,
            leadership.clone(),
            recorder("job-controller"),
        )?;
        cronjob::start(
            &client,
            &informers,
            leadership.clone(),
            recorder("cronjob-controller"),
        )?;
        garbagecollector::start(rest, leadership.clone());
        endpoints::start(&client, &informers, leadership.clone())?;
        namespace::start(&client, &informers, leadership.clone())?;
        serviceaccount::start(&client, &informers, leadership.clone())?;
        disruption::start(&client, &informers, leadership.clone())?;
        resourcequota::start(&client, &informers, leadership.clone())?;
        let cidrs = nodeipam::CidrSet::new(&options.cluster_cidr, options.node_cidr_mask_size)
            .map_err(|e| {
                ClientError::Api(crate::apiserver::status::ApiError::bad_request(
                    e.to_string(),
                ))
            })?;
        nodeipam::start(
            &client,
            &informers,
            leadership.clone(),
            recorder("node-ipam-controller"),
            cidrs,
        )?;
        nodelifecycle::start(
            &client,
            &informers,
            leadership.clone(),
            recorder("node-controller"),
            nodelifecycle::LifecycleConfig {
                grace_period: options.node_monitor_grace_period,
                monitor_period: options.node_monitor_period,
            },
        )?;
    }
    Ok(())
}
