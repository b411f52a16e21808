//! An attachment: one container's interface on the network, the key of all of the plugin's
//! state (`(network, CNI_CONTAINERID, CNI_IFNAME)` in the spec's words), and the names
//! derived from it.
//!
//! Owns the validation of container ids and interface names and the host-side link name.
//! It must not touch the system.
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every host-side veth the plugin creates.
pub const HOST_LINK_PREFIX: &str = "ctn";
/// Hex characters of the hash after the prefix (3 + 11 = 14, under IFNAMSIZ's 15).
const HOST_LINK_HASH_CHARS: usize = 11;
/// Longest interface name Linux accepts (IFNAMSIZ − 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// One container interface on the network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME`: the interface's name inside the container.
    pub ifname: String,
}

impl Attachment {
    /// An attachment from values already validated with [`check_container_id`] and
    /// [`check_ifname`].
    pub fn new(container_id: &str, ifname: &str) -> Self {
        Self {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        }
    }

    /// The host end of this attachment's veth: `ctn` and 11 hex characters of a SHA-256 of
    /// the container id and interface name, so DEL and GC find it from the attachment
    /// alone and two attachments practically never share it.
    pub fn host_link_name(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.container_id.as_bytes());
        hasher.update(b"/");
        hasher.update(self.ifname.as_bytes());
        let digest = hex::encode(hasher.finalize());
        format!("{HOST_LINK_PREFIX}{}", &digest[..HOST_LINK_HASH_CHARS])
    }
}

/// The spec's rule for a container id: not empty, starts with an ASCII letter or digit,
/// then letters, digits, `_`, `.` or `-`.
pub fn check_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("is empty".to_owned()),
        Some(first) if !first.is_ascii_alphanumeric() => {
            return Err("must start with a letter or digit".to_owned())
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "contains {bad:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(())
}

/// The spec's rule for an interface name: 1–15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!("is longer than {MAX_IFNAME_LEN} bytes"));
    }
    if name == "." || name == ".." {
        return Err("must not be '.' or '..'".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("contains {bad:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_link_name_is_deterministic_short_and_distinct() {
        let a = Attachment::new("abc123", "eth0");
        let name = a.host_link_name();
        assert_eq!(name, Attachment::new("abc123", "eth0").host_link_name());
        assert!(name.starts_with("ctn"), "{name}");
        assert_eq!(name.len(), 14);
        assert!(name.len() <= MAX_IFNAME_LEN);
        assert!(name[3..].chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        assert_ne!(name, Attachment::new("abc123", "net1").host_link_name());
        assert_ne!(name, Attachment::new("abc124", "eth0").host_link_name());
    }

    #[test]
    fn container_ids_follow_the_spec() {
        assert!(check_container_id("a").is_ok());
        assert!(check_container_id("0f3e_a.b-c").is_ok());
        assert!(check_container_id("").is_err());
        assert!(check_container_id("-abc").is_err());
        assert!(check_container_id("abc/def").is_err());
        assert!(check_container_id("abc\ndef").is_err());
    }

    #[test]
    fn interface_names_follow_the_spec() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        assert!(check_ifname("a234567890123456").is_err());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
