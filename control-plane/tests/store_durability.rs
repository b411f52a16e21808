//! The embedded store's durability: every acknowledged write survives a SIGKILL at any
//! point (checked over 20 kills of a writer process under load), revisions keep rising
//! across restarts, and a data directory that is corrupt or belongs to something else is
//! refused with a clear error instead of a panic.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use corten_control_plane::store::{
    embedded::{EmbeddedOptions, EmbeddedStore, DB_FILE},
    Range, Store, StoreError,
};
use rand::Rng;

const CRASH_DIR_ENV: &str = "CORTEN_STORE_CRASH_DIR";
const CRASH_ROUND_ENV: &str = "CORTEN_STORE_CRASH_ROUND";
const ROUNDS: usize = 20;
const WRITERS: usize = 4;

fn open(dir: &Path) -> Result<Arc<EmbeddedStore>, StoreError> {
    EmbeddedStore::open(dir, EmbeddedOptions::default())
}

/// One acknowledged write as the child reported it.
#[derive(Debug)]
struct Ack {
    key: String,
    revision: i64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    let key = parts.next()?.to_owned();
    let revision = parts.next()?.parse().ok()?;
    Some(Ack { key, revision })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut last_revision = 0;
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .env(CRASH_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the writer process")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first acknowledgement, then kill at a random moment under load.
        let first = loop {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(30))
                .context("the writer acknowledged nothing")?;
            if line.starts_with("ack ") {
                break line;
            }
        };
        let pause = rand::rng().random_range(5..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        child.kill()?;
        child.wait()?;
        let _ = reader.join();
        let acks: Vec<Ack> = std::iter::once(first)
            .chain(lines_rx.try_iter())
            .filter_map(|l| parse_ack(&l))
            .collect();

        let store = open(dir.path())?;
        let current = store.current_revision().await?;
        for ack in &acks {
            let kv = store
                .get(ack.key.as_bytes())
                .await?
                .with_context(|| format!("round {round}: acknowledged {} is lost", ack.key))?;
            assert_eq!(kv.mod_revision, ack.revision, "round {round}: {}", ack.key);
        }
        let max_acked = acks.iter().map(|a| a.revision).max().unwrap_or(0);
        assert!(
            current >= max_acked,
            "round {round}: revision {current} < acknowledged {max_acked}"
        );
        assert!(
            current > last_revision,
            "round {round}: revision did not rise ({current} after {last_revision})"
        );
        let next = store
            .put(format!("after-crash/{round}").as_bytes(), b"x")
            .await?;
        assert_eq!(next, current + 1, "round {round}: revisions must continue");
        last_revision = next;
        total_acks += acks.len();
        drop(store);
    }
    assert!(
        total_acks >= ROUNDS * 2,
        "too little load: {total_acks} writes in {ROUNDS} rounds"
    );
    Ok(())
}

/// The writer process of `acknowledged_writes_survive_sigkill`: puts keys from several
/// tasks and prints each acknowledgement. Only that test runs it (it sets the directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of acknowledged_writes_survive_sigkill, which runs it"]
async fn crash_child_writer() -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        bail!("run by acknowledged_writes_survive_sigkill only ({CRASH_DIR_ENV} unset)");
    };
    let round = std::env::var(CRASH_ROUND_ENV).unwrap_or_default();
    let store = open(Path::new(&dir))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        let round = round.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..100_000u32 {
                if Instant::now() > deadline {
                    break;
                }
                let key = format!("crash/{round}/{writer}/{n:06}");
                let revision = store.put(key.as_bytes(), &n.to_le_bytes()).await?;
                // One write(2) per line, so a kill never leaves half an acknowledgement.
                println!("ack {key} {revision}");
            }
            Ok::<(), StoreError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn expect_data_dir_error(result: Result<Arc<EmbeddedStore>, StoreError>, needle: &str) {
    match result {
        Err(StoreError::DataDir { detail, path }) => {
            assert!(
                detail.contains(needle) || path.to_string_lossy().contains(needle),
                "error {detail:?} at {} does not mention {needle:?}",
                path.display()
            );
        }
        Err(other) => panic!("expected a data directory error, got {other}"),
        Ok(_) => panic!("a bad data directory was accepted"),
    }
}

#[tokio::test]
async fn a_garbage_database_file_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 64 * 1024])?;
    expect_data_dir_error(open(dir.path()), DB_FILE);
    Ok(())
}

#[tokio::test]
async fn a_truncated_database_file_is_refused_or_recovered_intact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let store = open(dir.path())?;
        for i in 0..200u32 {
            store.put(format!("/k/{i}").as_bytes(), &[7; 512]).await?;
        }
    }
    let file = dir.path().join(DB_FILE);
    let len = std::fs::metadata(&file)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)?
        .set_len(len / 3)?;
    match open(dir.path()) {
        Err(StoreError::DataDir { .. }) => {}
        Err(other) => panic!("expected a data directory error, got {other}"),
        // redb may recover a consistent older state from a damaged file; then every key it
        // returns must be intact.
        Ok(store) => {
            for kv in store.range(Range::prefix("/k/")).await?.kvs {
                assert_eq!(kv.value, vec![7; 512]);
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_etcd_data_directory_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("member/snap"))?;
    expect_data_dir_error(open(dir.path()), "etcd");
    Ok(())
}

#[tokio::test]
async fn a_directory_of_other_files_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("notes.txt"), "not a store")?;
    expect_data_dir_error(open(dir.path()), "not a corten store");
    Ok(())
}

#[tokio::test]
async fn a_foreign_format_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let db = redb::Database::create(dir.path().join(DB_FILE))?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))?;
            meta.insert("format", b"someone-else/9".as_slice())?;
        }
        txn.commit()?;
    }
    expect_data_dir_error(open(dir.path()), "someone-else/9");
    Ok(())
}

#[tokio::test]
async fn a_file_in_place_of_the_directory_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("store");
    std::fs::write(&file, "x")?;
    expect_data_dir_error(open(&file), "store");
    Ok(())
}
