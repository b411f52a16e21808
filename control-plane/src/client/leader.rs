//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the holder renews `renewTime` every retry period; a candidate takes the Lease
//! over once it has seen the same record, unchanged, for the lease duration (time measured
//! on the candidate's own clock, so clock skew between servers does not matter); a holder
//! that cannot renew within the renew deadline stops leading.
//!
//! Owns the Lease record and the leading / not-leading signal. It must not start or stop
//! anything itself: the caller follows [`Leadership`] and runs its work while it is true.
use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

use super::api::{Api, Client, ClientError};

/// How an election is run (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name, e.g. `kube-scheduler`.
    pub name: String,
    /// This candidate's identity (unique per process).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often candidates and the leader look at the Lease.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// The defaults for a Lease in `kube-system`.
    pub fn new(name: &str, identity: &str) -> Self {
        Self {
            namespace: "kube-system".to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this process leads; changes as the election goes.
pub type Leadership = watch::Receiver<bool>;

/// Starts campaigning; the returned receiver is true while this process holds the Lease.
pub fn campaign(client: &Client, config: ElectionConfig) -> Result<Leadership, ClientError> {
    let api = client.namespaced::<Lease>(&config.namespace)?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut candidate = Candidate {
            api,
            config,
            observed: None,
            last_renewal: None,
        };
        loop {
            let leading = candidate.round().await;
            if *tx.borrow() != leading {
                info!(lease = %candidate.config.name, identity = %candidate.config.identity, leading, "leadership changed");
                tx.send_replace(leading);
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(candidate.config.retry_period).await;
        }
    });
    Ok(rx)
}

struct Candidate {
    api: Api<Lease>,
    config: ElectionConfig,
    /// The last record seen (its resourceVersion) and when it was first seen.
    observed: Option<(String, Instant)>,
    /// When this process last renewed successfully.
    last_renewal: Option<Instant>,
}

/// The current time as a MicroTime (jiff is built without its clock here).
pub fn now() -> MicroTime {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let micros = i32::try_from(since.subsec_micros()).unwrap_or(0);
    MicroTime(
        Timestamp::new(since.as_secs() as i64, micros * 1000).unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

impl Candidate {
    /// One look at the Lease; returns whether this process leads afterwards.
    async fn round(&mut self) -> bool {
        match self.try_acquire_or_renew().await {
            Ok(leading) => {
                if leading {
                    self.last_renewal = Some(Instant::now());
                }
                leading
            }
            Err(e) => {
                warn!(lease = %self.config.name, error = %e, "leader election round failed");
                // Keep leading only while within the renew deadline.
                self.last_renewal
                    .is_some_and(|at| at.elapsed() < self.config.renew_deadline)
            }
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, ClientError> {
        let Some(current) = self.api.get(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&lease).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_already_exists() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        if holder == self.config.identity {
            let mut renewed = current.clone();
            renewed.spec = Some(self.spec(transitions, spec.acquire_time.clone()));
            return match self.api.replace(&self.config.name, &renewed).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_conflict() => Ok(false),
                Err(e) => Err(e),
            };
        }
        // Someone else's (or nobody's) record: has it stood still for a whole lease?
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == version => *at,
            _ => {
                self.observed = Some((version, Instant::now()));
                Instant::now()
            }
        };
        let duration = spec
            .lease_duration_seconds
            .filter(|s| *s > 0)
            .map_or(self.config.lease_duration, |s| {
                Duration::from_secs(s as u64)
            });
        if !holder.is_empty() && first_seen.elapsed() < duration {
            return Ok(false);
        }
        let mut taken = current.clone();
        taken.spec = Some(self.spec(transitions.saturating_add(1), None));
        match self.api.replace(&self.config.name, &taken).await {
            Ok(_) => {
                info!(lease = %self.config.name, previous = %holder, "took over the lease");
                Ok(true)
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }
}
