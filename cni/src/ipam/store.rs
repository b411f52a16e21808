//! The file-backed allocation store: `DATA_DIR/NETWORK/` holds one file per allocated
//! address (named by the address, holding its owner as JSON), `last-reserved` (where the
//! next search starts) and `lock`.
//!
//! Every operation takes an exclusive `flock` on `lock` for its whole read-decide-write, so
//! concurrent plugin processes (containerd runs ADDs in parallel) see each other's
//! allocations. Records are written to a temporary file and renamed into place, so a crash
//! never leaves a half-written one.
//!
//! Owns the on-disk format. It must not decide which address is next (that is
//! [`super::next_free`]) and must not touch anything outside its directory.
use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions},
    io::ErrorKind,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use super::{next_free, stale, IpamError, Record};
use crate::{attachment::Attachment, subnet::Ipv4Subnet};

/// The file every operation locks.
const LOCK_FILE: &str = "lock";
/// The last address handed out.
const LAST_RESERVED_FILE: &str = "last-reserved";
/// Prefix of records being written.
const TEMP_PREFIX: &str = ".tmp-";

/// An address held for an attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The address.
    pub ip: Ipv4Addr,
    /// False when the attachment already held it (a repeated ADD).
    pub fresh: bool,
}

/// One network's allocations on this node.
#[derive(Debug, Clone)]
pub struct IpamStore {
    dir: PathBuf,
    subnet: Ipv4Subnet,
}

impl IpamStore {
    /// The store in `dir` (created if missing) for `subnet`.
    pub fn open(dir: &Path, subnet: Ipv4Subnet) -> Result<Self, IpamError> {
        fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            subnet,
        })
    }

    /// The address `owner` holds, allocating the next free one if it holds none.
    pub fn allocate(&self, owner: &Attachment) -> Result<Allocation, IpamError> {
        let lock = self.lock()?;
        let records = lock.records()?;
        if let Some(ip) = owned_by(&records, owner) {
            return Ok(Allocation { ip, fresh: false });
        }
        let taken: BTreeSet<Ipv4Addr> = records.iter().map(|(ip, _)| *ip).collect();
        let ip =
            next_free(&self.subnet, &taken, lock.last_reserved()).ok_or(IpamError::Exhausted {
                subnet: self.subnet,
                capacity: self.subnet.pod_capacity(),
            })?;
        lock.write_record(ip, owner)?;
        lock.write_last_reserved(ip)?;
        Ok(Allocation { ip, fresh: true })
    }

    /// The address `owner` holds, if any.
    pub fn find(&self, owner: &Attachment) -> Result<Option<Ipv4Addr>, IpamError> {
        let lock = self.lock()?;
        Ok(owned_by(&lock.records()?, owner))
    }

    /// Frees every address `owner` holds; returns them (none is not an error).
    pub fn release(&self, owner: &Attachment) -> Result<Vec<Ipv4Addr>, IpamError> {
        let lock = self.lock()?;
        let mine: Vec<Ipv4Addr> = lock
            .records()?
            .into_iter()
            .filter(|(_, who)| who.as_ref() == Some(owner))
            .map(|(ip, _)| ip)
            .collect();
        for ip in &mine {
            lock.remove_record(*ip)?;
        }
        Ok(mine)
    }

    /// Frees `ip` if its record still says `owner` (GC: the record may have changed
    /// hands since it was found stale); true if it was freed.
    pub fn release_record(
        &self,
        ip: Ipv4Addr,
        owner: Option<&Attachment>,
    ) -> Result<bool, IpamError> {
        let lock = self.lock()?;
        let current = lock.records()?.into_iter().find(|(held, _)| *held == ip);
        match current {
            Some((_, who)) if who.as_ref() == owner => {
                lock.remove_record(ip)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Every allocation, in address order.
    pub fn records(&self) -> Result<Vec<Record>, IpamError> {
        self.lock()?.records()
    }

    /// The allocations no attachment in `valid` owns.
    pub fn stale(&self, valid: &[Attachment]) -> Result<Vec<Record>, IpamError> {
        Ok(stale(&self.records()?, valid))
    }

    /// How many pod addresses are free.
    pub fn free_count(&self) -> Result<u32, IpamError> {
        let records = self.records()?;
        let held = records
            .iter()
            .filter(|(ip, _)| self.subnet.is_pod_address(*ip))
            .count();
        let held = u32::try_from(held).unwrap_or(u32::MAX);
        Ok(self.subnet.pod_capacity().saturating_sub(held))
    }

    fn lock(&self) -> Result<Locked<'_>, IpamError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| io_error(&path, source))?;
        // Blocks until every other holder is done; each holds it for a few file operations.
        file.lock().map_err(|source| io_error(&path, source))?;
        Ok(Locked {
            dir: &self.dir,
            _file: file,
        })
    }
}

/// The directory while this process holds its lock (released when the file closes).
struct Locked<'a> {
    dir: &'a Path,
    _file: File,
}

impl Locked<'_> {
    fn records(&self) -> Result<Vec<Record>, IpamError> {
        let entries = fs::read_dir(self.dir).map_err(|source| io_error(self.dir, source))?;
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_error(self.dir, source))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let owner = match fs::read(&path) {
                Ok(bytes) => serde_json::from_slice::<Attachment>(&bytes).ok(),
                // Removed between listing and reading: not held any more.
                Err(err) if err.kind() == ErrorKind::NotFound => continue,
                Err(source) => return Err(io_error(&path, source)),
            };
            records.push((ip, owner));
        }
        records.sort_by_key(|(ip, _)| *ip);
        Ok(records)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED_FILE))
            .ok()
            .and_then(|text| text.trim().parse().ok())
    }

    fn write_last_reserved(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        self.write_atomically(LAST_RESERVED_FILE, ip.to_string().as_bytes())
    }

    fn write_record(&self, ip: Ipv4Addr, owner: &Attachment) -> Result<(), IpamError> {
        let body = serde_json::to_vec(owner)
            .map_err(|err| io_error(self.dir, std::io::Error::new(ErrorKind::InvalidData, err)))?;
        self.write_atomically(&ip.to_string(), &body)
    }

    fn remove_record(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io_error(&path, source)),
        }
    }

    fn write_atomically(&self, name: &str, body: &[u8]) -> Result<(), IpamError> {
        let temp = self.dir.join(format!("{TEMP_PREFIX}{name}"));
        let path = self.dir.join(name);
        fs::write(&temp, body).map_err(|source| io_error(&temp, source))?;
        fs::rename(&temp, &path).map_err(|source| io_error(&path, source))
    }
}

fn owned_by(records: &[Record], owner: &Attachment) -> Option<Ipv4Addr> {
    records
        .iter()
        .find(|(_, who)| who.as_ref() == Some(owner))
        .map(|(ip, _)| *ip)
}

fn io_error(path: &Path, source: std::io::Error) -> IpamError {
    IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, sync::Arc};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn store(dir: &Path, cidr: &str) -> IpamStore {
        IpamStore::open(dir, cidr.parse().expect("valid subnet")).expect("opens")
    }

    fn owner(i: usize) -> Attachment {
        Attachment::new(&format!("container{i}"), "eth0")
    }

    #[test]
    fn allocate_find_release() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ipam = store(&tmp.path().join("net"), "10.42.0.0/24");
        let a = ipam.allocate(&owner(1))?;
        assert_eq!(
            a,
            Allocation {
                ip: Ipv4Addr::new(10, 42, 0, 2),
                fresh: true
            }
        );
        let b = ipam.allocate(&owner(2))?;
        assert_eq!(b.ip, Ipv4Addr::new(10, 42, 0, 3));
        assert_eq!(ipam.find(&owner(1))?, Some(a.ip));
        assert_eq!(ipam.find(&owner(3))?, None);

        // The record names its owner.
        let record: serde_json::Value =
            serde_json::from_slice(&fs::read(tmp.path().join("net/10.42.0.2"))?)?;
        assert_eq!(
            record,
            serde_json::json!({"containerID": "container1", "ifname": "eth0"})
        );

        assert_eq!(ipam.release(&owner(1))?, vec![a.ip]);
        assert_eq!(ipam.release(&owner(1))?, Vec::<Ipv4Addr>::new());
        assert_eq!(ipam.find(&owner(1))?, None);
        assert!(!tmp.path().join("net/10.42.0.2").exists());
        // The released address is not reused straight away.
        assert_eq!(ipam.allocate(&owner(3))?.ip, Ipv4Addr::new(10, 42, 0, 4));
        Ok(())
    }

    #[test]
    fn repeated_allocation_for_one_attachment_returns_its_address() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ipam = store(tmp.path(), "10.42.0.0/24");
        let first = ipam.allocate(&owner(1))?;
        let again = ipam.allocate(&owner(1))?;
        assert_eq!(
            again,
            Allocation {
                ip: first.ip,
                fresh: false
            }
        );
        assert_eq!(ipam.records()?.len(), 1);
        // Another interface of the same container is another attachment.
        let net1 = ipam.allocate(&Attachment::new("container1", "net1"))?;
        assert_ne!(net1.ip, first.ip);
        Ok(())
    }

    #[test]
    fn exhaustion_is_an_error_and_release_makes_room() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ipam = store(tmp.path(), "10.42.0.0/29"); // .2 to .6
        for i in 0..5 {
            ipam.allocate(&owner(i))?;
        }
        assert_eq!(ipam.free_count()?, 0);
        let err = ipam.allocate(&owner(99)).expect_err("full");
        assert!(
            matches!(err, IpamError::Exhausted { capacity: 5, .. }),
            "{err}"
        );
        ipam.release(&owner(2))?;
        assert_eq!(ipam.free_count()?, 1);
        assert_eq!(ipam.allocate(&owner(99))?.ip, Ipv4Addr::new(10, 42, 0, 4));
        Ok(())
    }

    #[test]
    fn gc_finds_and_releases_what_no_valid_attachment_owns() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ipam = store(tmp.path(), "10.42.0.0/24");
        for i in 0..4 {
            ipam.allocate(&owner(i))?;
        }
        fs::write(tmp.path().join("10.42.0.100"), b"garbage")?;
        let valid = [owner(0), owner(2)];
        let stale = ipam.stale(&valid)?;
        let stale_ips: Vec<Ipv4Addr> = stale.iter().map(|(ip, _)| *ip).collect();
        assert_eq!(
            stale_ips,
            vec![
                Ipv4Addr::new(10, 42, 0, 3),
                Ipv4Addr::new(10, 42, 0, 5),
                Ipv4Addr::new(10, 42, 0, 100)
            ]
        );
        for (ip, who) in &stale {
            assert!(ipam.release_record(*ip, who.as_ref())?);
        }
        // A record that changed hands in between is left alone.
        assert!(!ipam.release_record(Ipv4Addr::new(10, 42, 0, 2), Some(&owner(7)))?);
        let left: Vec<Option<Attachment>> = ipam.records()?.into_iter().map(|(_, o)| o).collect();
        assert_eq!(left, vec![Some(owner(0)), Some(owner(2))]);
        Ok(())
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = Arc::new(tmp.path().to_path_buf());
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let dir = Arc::clone(&dir);
                // Each thread opens its own store (and lock file), as separate plugin
                // processes do.
                std::thread::spawn(move || store(&dir, "10.42.0.0/24").allocate(&owner(i)))
            })
            .collect();
        let mut ips = HashSet::new();
        for thread in threads {
            let allocation = thread.join().map_err(|_| "allocating thread panicked")??;
            assert!(allocation.fresh);
            assert!(
                ips.insert(allocation.ip),
                "{} handed out twice",
                allocation.ip
            );
        }
        assert_eq!(ips.len(), 20);
        assert_eq!(store(&dir, "10.42.0.0/24").records()?.len(), 20);
        Ok(())
    }

    #[test]
    fn temporary_and_foreign_files_are_not_records() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ipam = store(tmp.path(), "10.42.0.0/24");
        fs::write(tmp.path().join(".tmp-10.42.0.9"), b"{}")?;
        fs::write(tmp.path().join("notes"), b"x")?;
        assert!(ipam.records()?.is_empty());
        assert_eq!(ipam.free_count()?, 253);
        Ok(())
    }
}
