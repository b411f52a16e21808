//! The invocation: the `CNI_*` environment variables the runtime sets, parsed and checked
//! per command as the spec requires.
//!
//! Owns which variables each command needs and how they are validated (code 4 when they
//! are not). It must not read stdin or the process environment itself: the binary passes
//! the variables in, so tests and fuzzers can too.
use std::path::{Path, PathBuf};

use crate::attachment::{check_container_id, check_ifname, Attachment};

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach it; idempotent.
    Del,
    /// Verify the attachment is still as ADD made it.
    Check,
    /// Report supported spec versions.
    Version,
    /// Report whether ADD can be served (spec 1.1).
    Status,
    /// Remove whatever belongs to attachments the runtime no longer knows (spec 1.1).
    Gc,
}

impl Command {
    /// The command's name as `CNI_COMMAND` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// What is wrong with the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// `CNI_COMMAND` is not set.
    #[error("CNI_COMMAND is not set")]
    MissingCommand,
    /// `CNI_COMMAND` names no command of the spec.
    #[error("CNI_COMMAND {0:?} is not a CNI command (ADD, DEL, CHECK, VERSION, STATUS, GC)")]
    UnknownCommand(String),
    /// A variable the command needs is not set or empty.
    #[error("{var} is required for {command}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// The command that needs it.
        command: &'static str,
    },
    /// A variable is set to something the spec forbids.
    #[error("{var} {value:?} {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The runtime's `CNI_*` variables.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    container_id: Option<String>,
    netns: Option<String>,
    ifname: Option<String>,
    /// `CNI_ARGS`, unparsed (the plugin needs none of its keys).
    pub args: Option<String>,
    /// `CNI_PATH` (the plugin delegates to no other plugin).
    pub path: Option<String>,
}

impl Invocation {
    /// Reads the variables through `var` (e.g. `std::env::var(..).ok()`); only the command
    /// is checked here, the rest when a command asks for them.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
        let command = non_empty("CNI_COMMAND").ok_or(EnvError::MissingCommand)?;
        let command = Command::parse(&command).ok_or(EnvError::UnknownCommand(command))?;
        Ok(Self {
            command,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS"),
            ifname: non_empty("CNI_IFNAME"),
            args: non_empty("CNI_ARGS"),
            path: non_empty("CNI_PATH"),
        })
    }

    /// `CNI_CONTAINERID` and `CNI_IFNAME`, both required and valid.
    pub fn attachment(&self) -> Result<Attachment, EnvError> {
        let command = self.command.name();
        let id = self.container_id.as_deref().ok_or(EnvError::Missing {
            var: "CNI_CONTAINERID",
            command,
        })?;
        check_container_id(id).map_err(|reason| EnvError::Invalid {
            var: "CNI_CONTAINERID",
            value: id.to_owned(),
            reason,
        })?;
        let ifname = self.ifname.as_deref().ok_or(EnvError::Missing {
            var: "CNI_IFNAME",
            command,
        })?;
        check_ifname(ifname).map_err(|reason| EnvError::Invalid {
            var: "CNI_IFNAME",
            value: ifname.to_owned(),
            reason,
        })?;
        Ok(Attachment::new(id, ifname))
    }

    /// `CNI_NETNS`, required: a path to the container's network namespace.
    pub fn required_netns(&self) -> Result<&Path, EnvError> {
        self.netns().ok_or(EnvError::Missing {
            var: "CNI_NETNS",
            command: self.command.name(),
        })
    }

    /// `CNI_NETNS` if set (DEL may come without it).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref().map(Path::new)
    }

    /// `CNI_NETNS` as an owned path, if set.
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.netns().map(Path::to_path_buf)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn invocation(vars: &[(&str, &str)]) -> Result<Invocation, EnvError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Invocation::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn every_spec_command_parses() {
        for (name, command) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("VERSION", Command::Version),
            ("STATUS", Command::Status),
            ("GC", Command::Gc),
        ] {
            let inv = invocation(&[("CNI_COMMAND", name)]).expect("valid command");
            assert_eq!(inv.command, command);
            assert_eq!(command.name(), name);
        }
    }

    #[test]
    fn missing_or_unknown_command_is_an_error() {
        assert_eq!(invocation(&[]).err(), Some(EnvError::MissingCommand));
        assert_eq!(
            invocation(&[("CNI_COMMAND", "")]).err(),
            Some(EnvError::MissingCommand)
        );
        assert_eq!(
            invocation(&[("CNI_COMMAND", "add")]).err(),
            Some(EnvError::UnknownCommand("add".to_owned()))
        );
    }

    #[test]
    fn attachment_needs_valid_id_and_ifname() {
        let ok = invocation(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("valid");
        assert_eq!(ok.attachment(), Ok(Attachment::new("c1", "eth0")));

        let no_id = invocation(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")]).expect("cmd");
        let err = no_id.attachment().expect_err("missing id");
        assert_eq!(err.to_string(), "CNI_CONTAINERID is required for DEL");

        let bad_if = invocation(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "a/b"),
        ])
        .expect("cmd");
        assert!(matches!(
            bad_if.attachment(),
            Err(EnvError::Invalid {
                var: "CNI_IFNAME",
                ..
            })
        ));
    }

    #[test]
    fn netns_is_optional_until_required() {
        let inv = invocation(&[("CNI_COMMAND", "ADD")]).expect("cmd");
        assert!(inv.netns().is_none());
        assert_eq!(
            inv.required_netns().err(),
            Some(EnvError::Missing {
                var: "CNI_NETNS",
                command: "ADD"
            })
        );
        let inv = invocation(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/run/netns/x")]).expect("ok");
        assert_eq!(inv.required_netns(), Ok(Path::new("/run/netns/x")));
    }
}
