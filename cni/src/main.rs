//! `corten-cni`: the CNI plugin containerd executes for every pod sandbox.
//!
//! Owns the pod side of the network (interface, address, routes) and nothing on the node
//! beyond it. Today it answers `VERSION` as the CNI 1.1 spec says and refuses every other
//! command with a CNI error object: the plugin proper is still to come (README status).
use std::io::Write;

/// CNI spec versions this plugin will speak.
const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];

/// CNI's reserved code for "invalid necessary environment variables".
const ERR_BAD_ENV: u32 = 4;
/// First plugin-specific error code (the spec reserves 0–99).
const ERR_NOT_AVAILABLE: u32 = 100;

fn main() {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let (code, output) = respond(&command);
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{output}").and_then(|()| stdout.flush());
    if written.is_err() {
        std::process::exit(1);
    }
    std::process::exit(code);
}

/// The exit code and the JSON document for one invocation.
fn respond(command: &str) -> (i32, serde_json::Value) {
    match command {
        "VERSION" => (
            0,
            serde_json::json!({ "cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS }),
        ),
        "" => (1, error(ERR_BAD_ENV, "CNI_COMMAND is not set")),
        other => (
            1,
            error(
                ERR_NOT_AVAILABLE,
                &format!("corten-cni does not implement {other} yet"),
            ),
        ),
    }
}

fn error(code: u32, msg: &str) -> serde_json::Value {
    serde_json::json!({ "cniVersion": "1.1.0", "code": code, "msg": msg })
}

#[cfg(test)]
mod tests {
    use super::respond;

    #[test]
    fn version_lists_supported_versions() {
        let (code, out) = respond("VERSION");
        assert_eq!(code, 0);
        assert_eq!(out["supportedVersions"][1], "1.1.0");
    }

    #[test]
    fn missing_command_is_a_bad_env_error() {
        let (code, out) = respond("");
        assert_eq!(code, 1);
        assert_eq!(out["code"], 4);
    }
}
