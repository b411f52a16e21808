//! Small Python programs the lab tests run with the host's Python inside a node or the
//! fabric (the busybox image has no UDP server or client).
//!
//! Owns the scripts' text only; the tests decide where they run. Every script bounds its own
//! run time.

/// The host's Python.
pub const PYTHON: &str = "/usr/bin/python3";

/// A UDP backend on `argv[1]:argv[2]`: answers every datagram with `argv[3]` (default
/// `udp-PORT`), for at most 120 seconds.
pub const UDP_BACKEND: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(1)
answer = sys.argv[3] if len(sys.argv) > 3 else f"udp-{sys.argv[2]}"
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        _, peer = s.recvfrom(512)
    except socket.timeout:
        continue
    s.sendto(answer.encode(), peer)
"#;
