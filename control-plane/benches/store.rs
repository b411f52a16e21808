//! `cargo xtask bench store`: the same workload against the embedded store and against a
//! real etcd (Debian's etcd-server, started by xtask on loopback and passed in as
//! `CORTEN_BENCH_ETCD`), in one run. Writes `target/bench/store.json` and prints the
//! embedded/etcd ratio of every figure. Both stores fsync every acknowledged write.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use corten_control_plane::store::{
    embedded::{EmbeddedOptions, EmbeddedStore},
    etcd::EtcdStore,
    Range, Store, WatchRequest,
};
use futures::StreamExt;
use serde_json::{json, Value};

const SEQUENTIAL_PUTS: usize = 2_000;
const CLIENTS: usize = 16;
const PUTS_PER_CLIENT: usize = 250;
const RANGE_KEYS: usize = 10_000;
const RANGE_REPEATS: usize = 5;
const WATCHERS: usize = 100;
const WATCHED_PUTS: usize = 200;
const VALUE_BYTES: usize = 512;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let out_dir = std::env::var_os("CORTEN_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(&manifest).join("target/bench")
        });
    std::fs::create_dir_all(&out_dir)?;
    let endpoint = std::env::var("CORTEN_BENCH_ETCD")
        .context("CORTEN_BENCH_ETCD is not set: run this through `cargo xtask bench store`")?;

    let data = tempfile::Builder::new()
        .prefix("store-bench-")
        .tempdir_in(&out_dir)?;
    let embedded: Arc<dyn Store> = EmbeddedStore::open(
        data.path(),
        EmbeddedOptions {
            auto_compact: None,
            ..EmbeddedOptions::default()
        },
    )?;
    let embedded_figures = measure("embedded", embedded).await?;
    let etcd: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[endpoint]).await?);
    let etcd_figures = measure("etcd", etcd).await?;

    let mut ratios = serde_json::Map::new();
    println!(
        "\n{:<28} {:>14} {:>14} {:>16}",
        "figure", "embedded", "etcd", "embedded/etcd"
    );
    for (name, value) in embedded_figures.as_object().into_iter().flatten() {
        let (Some(mine), Some(theirs)) = (value.as_f64(), etcd_figures[name].as_f64()) else {
            continue;
        };
        // For times, smaller is better: report how many times faster embedded is.
        let higher_is_better = name.ends_with("ops_per_s");
        let ratio = if higher_is_better {
            mine / theirs
        } else {
            theirs / mine
        };
        ratios.insert(name.clone(), json!(ratio));
        println!("{name:<28} {mine:>14.3} {theirs:>14.3} {ratio:>15.2}x");
    }
    println!("(ratio > 1 means the embedded store is better on that figure)");
    let report = json!({
        "workload": {
            "sequential_puts": SEQUENTIAL_PUTS,
            "clients": CLIENTS,
            "puts_per_client": PUTS_PER_CLIENT,
            "range_keys": RANGE_KEYS,
            "watchers": WATCHERS,
            "watched_puts": WATCHED_PUTS,
            "value_bytes": VALUE_BYTES,
        },
        "embedded": embedded_figures,
        "etcd": etcd_figures,
        "embedded_over_etcd": ratios,
    });
    let path = out_dir.join("store.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

async fn measure(name: &str, store: Arc<dyn Store>) -> anyhow::Result<Value> {
    println!("measuring {name}...");
    let value = vec![b'v'; VALUE_BYTES];

    // Sequential durable puts.
    let mut latencies = Vec::with_capacity(SEQUENTIAL_PUTS);
    let started = Instant::now();
    for i in 0..SEQUENTIAL_PUTS {
        let key = format!("/bench/seq/{i:08}");
        let t = Instant::now();
        store.put(key.as_bytes(), &value).await?;
        latencies.push(t.elapsed());
    }
    let sequential = SEQUENTIAL_PUTS as f64 / started.elapsed().as_secs_f64();
    latencies.sort();

    // Concurrent clients.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let store = Arc::clone(&store);
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PUTS_PER_CLIENT {
                let key = format!("/bench/conc/{client:02}/{i:06}");
                store.put(key.as_bytes(), &value).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let concurrent = (CLIENTS * PUTS_PER_CLIENT) as f64 / started.elapsed().as_secs_f64();

    // Range over 10k keys.
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let store = Arc::clone(&store);
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (client..RANGE_KEYS).step_by(CLIENTS) {
                let key = format!("/bench/range/{i:08}");
                store.put(key.as_bytes(), &value).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let mut range_times = Vec::new();
    for _ in 0..RANGE_REPEATS {
        let t = Instant::now();
        let response = store.range(Range::prefix("/bench/range/")).await?;
        range_times.push(t.elapsed());
        anyhow::ensure!(
            response.kvs.len() == RANGE_KEYS,
            "range returned {}",
            response.kvs.len()
        );
    }
    range_times.sort();

    // Watch delivery latency with many watchers.
    let origin = Instant::now();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut stream = store
            .watch(WatchRequest::prefix("/bench/watch/", 0))
            .await?;
        watchers.push(tokio::spawn(async move {
            let mut delays = Vec::with_capacity(WATCHED_PUTS);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while delays.len() < WATCHED_PUTS {
                let batch = tokio::time::timeout_at(deadline, stream.next())
                    .await
                    .context("watch stalled")?
                    .context("watch ended")??;
                let now = origin.elapsed();
                for event in batch.events {
                    let sent = u64::from_le_bytes(event.kv.value[..8].try_into()?);
                    delays.push(now.saturating_sub(Duration::from_nanos(sent)));
                }
            }
            anyhow::Ok(delays)
        }));
    }
    // Let every watch get established before writing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..WATCHED_PUTS {
        let sent = u64::try_from(origin.elapsed().as_nanos())?;
        let key = format!("/bench/watch/{i:06}");
        store.put(key.as_bytes(), &sent.to_le_bytes()).await?;
    }
    let mut delays = Vec::new();
    for watcher in watchers {
        delays.extend(watcher.await??);
    }
    delays.sort();

    Ok(json!({
        "sequential_put_ops_per_s": sequential,
        "concurrent_put_ops_per_s": concurrent,
        "put_latency_p50_ms": percentile(&latencies, 0.50),
        "put_latency_p99_ms": percentile(&latencies, 0.99),
        "range_10k_ms": percentile(&range_times, 0.50),
        "watch_latency_p50_ms": percentile(&delays, 0.50),
        "watch_latency_p99_ms": percentile(&delays, 0.99),
    }))
}
