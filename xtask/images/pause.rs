//! pause: the process that holds a pod sandbox's namespaces. It reaps the zombies that
//! re-parent to it (it is PID 1 of the pod's PID namespace when one is shared) and sleeps
//! until SIGINT or SIGTERM ends it. Built statically by `cargo xtask images`; std only.
#![allow(unsafe_code)]

use std::os::raw::c_int;

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn pause() -> c_int;
    fn _exit(status: c_int) -> !;
}

extern "C" fn on_terminate(_signal: c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

extern "C" fn on_child(_signal: c_int) {
    let mut status: c_int = 0;
    // SAFETY: waitpid is async-signal-safe and `status` is a valid local.
    while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
}

fn main() {
    // SAFETY: the handlers only call async-signal-safe functions.
    unsafe {
        signal(SIGINT, on_terminate);
        signal(SIGTERM, on_terminate);
        signal(SIGCHLD, on_child);
    }
    loop {
        // SAFETY: pause takes no arguments; it returns after each handled signal.
        unsafe { pause() };
    }
}
