//! `corten-cni`: the CNI plugin binary containerd executes for every pod sandbox.
//!
//! Reads the `CNI_*` environment and the network configuration on stdin, hands both to
//! [`corten_cni::run`], prints its JSON on stdout and exits with its code. Logs go to
//! stderr (level from `CORTEN_CNI_LOG`, default `warn`). Everything else is in the library.
use std::{
    io::{IsTerminal, Read, Write},
    process::ExitCode,
};

use corten_cni::{
    config::LATEST_VERSION,
    error::{CniError, ErrorCode},
    Response, MAX_CONFIG_BYTES,
};

fn main() -> ExitCode {
    init_logging();
    let response = match read_stdin() {
        Ok(stdin) => corten_cni::run(|name| std::env::var(name).ok(), &stdin),
        Err(err) => Response::from_error(&err, LATEST_VERSION),
    };
    let mut stdout = std::io::stdout().lock();
    let written = if response.stdout.is_empty() {
        Ok(())
    } else {
        writeln!(stdout, "{}", response.stdout)
    };
    if written.and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    match u8::try_from(response.exit_code) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code),
        Err(_) => ExitCode::FAILURE,
    }
}

/// The network configuration. VERSION needs none, so a terminal on stdin is not waited on.
fn read_stdin() -> Result<Vec<u8>, CniError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut input = Vec::new();
    let limit = u64::try_from(MAX_CONFIG_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    stdin
        .lock()
        .take(limit)
        .read_to_end(&mut input)
        .map_err(|err| {
            CniError::new(
                ErrorCode::IoFailure,
                format!("reading the network configuration from stdin: {err}"),
            )
        })?;
    if input.len() > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            ErrorCode::DecodingFailure,
            format!("the network configuration is larger than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    Ok(input)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORTEN_CNI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
