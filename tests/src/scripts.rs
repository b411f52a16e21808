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

/// An HTTP/1.0 client with fixed source ports: `argv[1]` destination address, `argv[2]` port,
/// `argv[3]` path, `argv[4]` source address, `argv[5]` comma-separated source ports. For each
/// port in turn it binds `argv[4]:port` (`SO_REUSEADDR`), connects, sends one GET, reads the
/// answer to its end and closes with a reset (`SO_LINGER` 0), so no TIME_WAIT keeps the tuple
/// from being used again at once. It prints one line per port: `PORT BODY` (the body's first
/// line), or `PORT ERROR NAME MILLISECONDS` (the exception and how long the attempt took).
/// Each attempt is bounded by 3 seconds, the whole run by 90.
pub const FIXED_PORT_HTTP_CLIENT: &str = r#"
import socket, struct, sys, time
dst = (sys.argv[1], int(sys.argv[2]))
request = f"GET {sys.argv[3]} HTTP/1.0\r\nHost: {sys.argv[1]}\r\n\r\n".encode()
deadline = time.monotonic() + 90
for port in [int(p) for p in sys.argv[5].split(",")]:
    if time.monotonic() > deadline:
        print(f"{port} ERROR deadline 0", flush=True)
        continue
    started = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(3)
    try:
        s.bind((sys.argv[4], port))
        s.connect(dst)
        s.sendall(request)
        data = b""
        while len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        line = body.decode(errors="replace").strip().split("\n")[0] if body else "EMPTY"
        print(f"{port} {line}", flush=True)
    except Exception as e:
        elapsed = int((time.monotonic() - started) * 1000)
        print(f"{port} ERROR {type(e).__name__} {elapsed}", flush=True)
    finally:
        s.close()
"#;
