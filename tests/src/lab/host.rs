//! Running host tools (`ip`, `umount`) and entering a node: the lab's only privileged
//! edges. Everything that changes the host goes through here.
use std::{
    fs::{File, OpenOptions},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::Path,
    process::{Command, Output},
};

use anyhow::{bail, Context};

use super::paths::NETNS_DIR;

/// Runs a command to completion and fails with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// `ip` with arguments.
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run("ip", args)
}

/// `ip -n NETNS` with arguments.
pub fn ip_in(netns: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Makes `command` start inside `netns` (a name under /run/netns) and, when given, inside
/// the cgroup v2 directory `cgroup`; with `detach`, in a session of its own so that it
/// outlives the terminal that started it.
pub fn enter(
    command: &mut Command,
    netns: &str,
    cgroup: Option<&Path>,
    detach: bool,
) -> anyhow::Result<()> {
    let ns_path = Path::new(NETNS_DIR).join(netns);
    let ns: OwnedFd = File::open(&ns_path)
        .with_context(|| format!("opening {}", ns_path.display()))?
        .into();
    let procs: Option<OwnedFd> = match cgroup {
        Some(dir) => {
            let path = dir.join("cgroup.procs");
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            Some(file.into())
        }
        None => None,
    };
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it calls setns, write and setsid on descriptors
    // opened before the fork, allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(procs) = &procs {
                // Writing "0" moves the writing process itself.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if detach && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Sends `signal` to a process; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: i32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    #[allow(unsafe_code)]
    // SAFETY: kill takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err).with_context(|| format!("signalling pid {pid}"));
        }
    }
    Ok(())
}

/// Reaps `pid` if it is an exited child of this process; true if it was reaped.
pub fn reap_if_child(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    let mut status = 0;
    #[allow(unsafe_code)]
    // SAFETY: waitpid writes only to `status`, a valid local; WNOHANG never blocks, and a
    // pid that is not our child yields ECHILD without side effects.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    rc == pid
}

/// Whether a process is alive (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut found: Vec<String> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|point| point == &prefix || point.starts_with(&format!("{prefix}/")))
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.matches('/').count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(byte) => out.push(char::from(byte)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unescape_mount_path;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
