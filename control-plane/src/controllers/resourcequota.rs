//! The ResourceQuota controller (kube-controller-manager's `resourcequota`): keeps each
//! quota's `status.hard` equal to its spec and `status.used` equal to what its namespace
//! holds — pod counts and the compute requests and limits of pods that are not finished,
//! object counts (`count/<resource>[.<group>]` and the legacy names such as `services`,
//! `configmaps`, `secrets`, `persistentvolumeclaims`, `services.nodeports`,
//! `services.loadbalancers`) — recomputed when anything in the namespace changes and every
//! 5 minutes.
//!
//! Owns quota usage only; refusing writes over quota is admission's job.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::ResourceQuota, apimachinery::pkg::api::resource::Quantity};
use serde_json::{json, Value};

use super::{
    pods,
    runner::{run_workers, Requeue},
};
use crate::{
    apiserver::rest::{Query, Rest},
    client::{
        informer::key_of, leader::Leadership, CachedPod, Client, ClientError, Informer, Informers,
        WorkQueue,
    },
    scheduler::resources::{parse_milli, parse_units},
};

/// Full recount period (upstream's resync).
const RESYNC: Duration = Duration::from_secs(300);

/// Starts the controller.
pub fn start(
    client: &Client,
    informers: &Informers,
    leadership: Leadership,
) -> Result<(), ClientError> {
    let quotas = informers.get::<ResourceQuota>()?;
    let pods = informers.get::<CachedPod>()?;
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        quotas.on_change(Box::new(move |_, new| {
            if let Some(quota) = new {
                queue.add(key_of(quota.as_ref()));
            }
        }));
    }
    {
        let queue = queue.clone();
        let quotas = quotas.clone();
        pods.on_change(Box::new(move |old, new| {
            if let Some(pod) = new.or(old) {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                for quota in quotas.list_namespace(namespace) {
                    queue.add(key_of(quota.as_ref()));
                }
            }
        }));
    }
    let controller = Arc::new(Controller {
        client: client.clone(),
        quotas,
        pods,
    });
    run_workers("resourcequota", queue, leadership, 1, move |key| {
        let controller = controller.clone();
        async move { controller.reconcile(&key).await }
    });
    Ok(())
}

/// Sums requests or limits of a resource over pods (millis for cpu, units otherwise).
fn pod_total(pods: &[Arc<CachedPod>], field: &str, resource: &str) -> i64 {
    let parse = |q: &Quantity| {
        if resource == "cpu" {
            parse_milli(&q.0).unwrap_or(0)
        } else {
            parse_units(&q.0).unwrap_or(0)
        }
    };
    pods.iter()
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.resources.as_ref())
        .filter_map(|r| {
            if field == "limits" {
                r.limits.as_ref()
            } else {
                r.requests.as_ref()
            }
        })
        .filter_map(|list| list.get(resource))
        .map(parse)
        .sum()
}

fn format_amount(resource: &str, amount: i64) -> String {
    if resource.ends_with("cpu") {
        if amount % 1000 == 0 {
            (amount / 1000).to_string()
        } else {
            format!("{amount}m")
        }
    } else {
        amount.to_string()
    }
}

struct Controller {
    client: Client,
    quotas: Informer<ResourceQuota>,
    pods: Informer<CachedPod>,
}

impl Controller {
    /// How many objects of `plural` (in `group`) the namespace holds.
    async fn count(
        &self,
        rest: &Rest,
        namespace: &str,
        group: &str,
        plural: &str,
    ) -> Result<Option<Vec<Value>>, ClientError> {
        let Some(def) = rest
            .registry
            .all()
            .into_iter()
            .find(|d| d.plural == plural && d.group == group && d.namespaced)
        else {
            return Ok(None);
        };
        let list = rest.list(&def, Some(namespace), &Query::new()).await?;
        Ok(Some(list["items"].as_array().cloned().unwrap_or_default()))
    }

    async fn reconcile(&self, key: &str) -> Result<Requeue, ClientError> {
        self.pods.synced().await;
        let Some(quota) = self.quotas.get(key) else {
            return Ok(None);
        };
        let namespace = quota.metadata.namespace.clone().unwrap_or_default();
        let name = quota.metadata.name.clone().unwrap_or_default();
        let hard = quota
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let live: Vec<Arc<CachedPod>> = self
            .pods
            .list_namespace(&namespace)
            .into_iter()
            .filter(|p| !pods::is_terminal(p) && p.metadata.deletion_timestamp.is_none())
            .collect();
        let rest = self.client.rest().clone();
        let mut used: BTreeMap<String, Quantity> = BTreeMap::new();
        for resource in hard.keys() {
            let amount = match resource.as_str() {
                "pods" | "count/pods" => Some(live.len() as i64),
                "cpu" | "requests.cpu" => Some(pod_total(&live, "requests", "cpu")),
                "memory" | "requests.memory" => Some(pod_total(&live, "requests", "memory")),
                "ephemeral-storage" | "requests.ephemeral-storage" => {
                    Some(pod_total(&live, "requests", "ephemeral-storage"))
                }
                "limits.cpu" => Some(pod_total(&live, "limits", "cpu")),
                "limits.memory" => Some(pod_total(&live, "limits", "memory")),
                "limits.ephemeral-storage" => Some(pod_total(&live, "limits", "ephemeral-storage")),
                "services.nodeports" | "services.loadbalancers" => {
                    let services = self
                        .count(&rest, &namespace, "", "services")
                        .await?
                        .unwrap_or_default();
                    Some(if resource == "services.loadbalancers" {
                        services
                            .iter()
                            .filter(|s| s.pointer("/spec/type") == Some(&json!("LoadBalancer")))
                            .count() as i64
                    } else {
                        services
                            .iter()
                            .filter(|s| {
                                matches!(
                                    s.pointer("/spec/type").and_then(Value::as_str),
                                    Some("NodePort" | "LoadBalancer")
                                )
                            })
                            .map(|s| {
                                s.pointer("/spec/ports")
                                    .and_then(Value::as_array)
                                    .map_or(0, Vec::len) as i64
                            })
                            .sum()
                    })
                }
                other => {
                    // `count/deployments.apps`, or a legacy plural (`services`, `secrets`, ...).
                    let plural_group = other.strip_prefix("count/").unwrap_or(other);
                    let (plural, group) =
                        plural_group.split_once('.').unwrap_or((plural_group, ""));
                    self.count(&rest, &namespace, group, plural)
                        .await?
                        .map(|items| items.len() as i64)
                }
            };
            if let Some(amount) = amount {
                used.insert(resource.clone(), Quantity(format_amount(resource, amount)));
            }
        }
        let status = quota.status.clone().unwrap_or_default();
        if status.hard.as_ref() != Some(&hard) || status.used.as_ref() != Some(&used) {
            let mut updated = (*quota).clone();
            updated.status = Some(k8s_openapi::api::core::v1::ResourceQuotaStatus {
                hard: Some(hard),
                used: Some(used),
            });
            self.client
                .namespaced::<ResourceQuota>(&namespace)?
                .replace_status(&name, &updated)
                .await?;
        }
        Ok(Some(RESYNC))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_written_as_quantities() {
        assert_eq!(format_amount("requests.cpu", 1500), "1500m");
        assert_eq!(format_amount("cpu", 2000), "2");
        assert_eq!(format_amount("requests.memory", 1024), "1024");
    }
}
