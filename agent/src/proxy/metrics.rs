//! The service proxy's metrics, for the agent's `/metrics` (the kubelet API): kube-proxy's
//! sync metrics under upstream's names, help texts and buckets
//! (`kubeproxy_sync_proxy_rules_duration_seconds`, `..._last_timestamp_seconds`,
//! `..._service_changes_total`, `..._endpoint_changes_total`), and corten's own: failed
//! syncs, the backend sets whose Maglev table did not fit, and the tc programs' counters.
//!
//! Owns the figures and their rendering in the Prometheus text format. The controller
//! records into a [`ProxyMetrics`] handle; it must not decide anything from them.
use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use corten_ebpf_common::nat_stat;

use super::tc_nat::NatStats;

/// Upstream's buckets: 1 ms doubling 15 times (to 16.384 s).
const SYNC_BUCKETS: usize = 15;
const FIRST_BUCKET_SECONDS: f64 = 0.001;

/// A handle the controller records into and `/metrics` renders; clones share the figures.
#[derive(Debug, Clone, Default)]
pub struct ProxyMetrics(Arc<Mutex<Figures>>);

#[derive(Debug, Clone, Default, PartialEq)]
struct Figures {
    /// Syncs that took at most bucket `i`'s bound (not yet cumulative).
    sync_buckets: [u64; SYNC_BUCKETS],
    sync_count: u64,
    sync_seconds: f64,
    last_synced: Option<f64>,
    sync_failures: u64,
    service_changes: u64,
    endpoint_changes: u64,
    untabled: usize,
    nat: Option<NatStats>,
}

/// Which watch a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Service,
    EndpointSlice,
}

impl ProxyMetrics {
    fn with(&self, record: impl FnOnce(&mut Figures)) {
        record(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// One Service or EndpointSlice added, changed or deleted (a listed one included), as
    /// upstream's change trackers count them.
    pub fn change(&self, change: Change) {
        self.with(|f| match change {
            Change::Service => f.service_changes += 1,
            Change::EndpointSlice => f.endpoint_changes += 1,
        });
    }

    /// One sync that took `took`, finished at `succeeded_at` or failed (`None`): observed
    /// either way, as upstream does; the last-sync time moves only on success. `untabled` is
    /// how many backend sets the Maglev map had no room for after a successful one.
    pub fn synced(&self, took: Duration, succeeded_at: Option<SystemTime>, untabled: usize) {
        let seconds = took.as_secs_f64();
        self.with(|f| {
            let bucket = (0..SYNC_BUCKETS)
                .find(|&i| seconds <= bucket_bound(i))
                .unwrap_or(SYNC_BUCKETS);
            if let Some(count) = f.sync_buckets.get_mut(bucket) {
                *count += 1;
            }
            f.sync_count += 1;
            f.sync_seconds += seconds;
            match succeeded_at {
                Some(at) => {
                    f.last_synced = at.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64());
                    f.untabled = untabled;
                }
                None => f.sync_failures += 1,
            }
        });
    }

    /// The tc programs' counters as last read.
    pub fn nat_stats(&self, stats: NatStats) {
        self.with(|f| f.nat = Some(stats));
    }

    /// Appends the metrics in the Prometheus text format (0.0.4).
    pub fn render(&self, out: &mut String) {
        let f = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let name = "kubeproxy_sync_proxy_rules_duration_seconds";
        family(
            out,
            name,
            "histogram",
            "[ALPHA] SyncProxyRules latency in seconds",
        );
        let mut cumulative = 0;
        for (i, count) in f.sync_buckets.iter().enumerate() {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                bucket_bound(i)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", f.sync_count);
        let _ = writeln!(out, "{name}_sum {}", f.sync_seconds);
        let _ = writeln!(out, "{name}_count {}", f.sync_count);
        let name = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
        family(
            out,
            name,
            "gauge",
            "[ALPHA] The last time proxy rules were successfully synced",
        );
        let _ = writeln!(out, "{name} {}", f.last_synced.unwrap_or(0.0));
        for (name, help, value) in [
            (
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "[ALPHA] Cumulative proxy rules Service changes",
                f.service_changes,
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "[ALPHA] Cumulative proxy rules Endpoint changes",
                f.endpoint_changes,
            ),
            (
                "corten_proxy_sync_failures_total",
                "Syncs of the service maps that failed (each is retried)",
                f.sync_failures,
            ),
        ] {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        let name = "corten_proxy_maglev_untabled_backend_sets";
        family(
            out,
            name,
            "gauge",
            "Backend sets (a Service port's, per traffic policy) reached from outside whose Maglev table did not fit the map: their new flows pick backends at random",
        );
        let _ = writeln!(out, "{name} {}", f.untabled);
        if let Some(nat) = f.nat {
            let name = "corten_proxy_nat_events_total";
            family(
                out,
                name,
                "counter",
                "What the tc programs counted for traffic from outside, by event",
            );
            for (event, value) in nat_stat::NAMES.iter().zip(nat) {
                let _ = writeln!(out, "{name}{{event=\"{event}\"}} {value}");
            }
        }
    }
}

/// The upper bound of sync-duration bucket `i`, in seconds.
fn bucket_bound(i: usize) -> f64 {
    FIRST_BUCKET_SECONDS * f64::from(1u32 << i)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(metrics: &ProxyMetrics) -> String {
        let mut out = String::new();
        metrics.render(&mut out);
        out
    }

    fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn syncs_fill_upstreams_buckets_and_only_successes_move_the_timestamp() {
        let metrics = ProxyMetrics::default();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        metrics.synced(Duration::from_micros(300), Some(at), 0);
        metrics.synced(
            Duration::from_millis(3),
            Some(at + Duration::from_secs(5)),
            2,
        );
        metrics.synced(Duration::from_secs(60), None, 7);
        let text = rendered(&metrics);
        let name = "kubeproxy_sync_proxy_rules_duration_seconds";
        // Cumulative, under upstream's bounds as Go prints them.
        for (bound, count) in [
            ("0.001", "1"),
            ("0.002", "1"),
            ("0.004", "2"),
            ("16.384", "2"),
            ("+Inf", "3"),
        ] {
            let series = format!("{name}_bucket{{le=\"{bound}\"}}");
            assert_eq!(value(&text, &series), Some(count), "{series}");
        }
        assert_eq!(value(&text, &format!("{name}_count")), Some("3"));
        let sum: f64 = value(&text, &format!("{name}_sum"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!((sum - 60.0033).abs() < 1e-9, "{sum}");
        assert_eq!(
            value(&text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
            Some("1700000005")
        );
        assert_eq!(value(&text, "corten_proxy_sync_failures_total"), Some("1"));
        // The failed sync's figure is not the datapath's.
        assert_eq!(
            value(&text, "corten_proxy_maglev_untabled_backend_sets"),
            Some("2")
        );
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
        // No tc programs read yet: no NAT series.
        assert!(!text.contains("corten_proxy_nat_events_total"));
    }

    #[test]
    fn changes_and_nat_counters_are_counted_by_kind() {
        let metrics = ProxyMetrics::default();
        metrics.change(Change::Service);
        metrics.change(Change::EndpointSlice);
        metrics.change(Change::EndpointSlice);
        metrics.nat_stats([9, 2, 0, 1, 0, 0, 0, 3]);
        let clone = metrics.clone();
        let text = rendered(&clone);
        assert_eq!(
            value(&text, "kubeproxy_sync_proxy_rules_service_changes_total"),
            Some("1")
        );
        assert_eq!(
            value(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total"),
            Some("2")
        );
        assert_eq!(
            value(&text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
            Some("0")
        );
        assert_eq!(
            value(
                &text,
                "corten_proxy_nat_events_total{event=\"flows_created\"}"
            ),
            Some("9")
        );
        assert_eq!(
            value(&text, "corten_proxy_nat_events_total{event=\"rejected\"}"),
            Some("3")
        );
    }
}
