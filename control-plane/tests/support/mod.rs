//! Fixtures shared by the control plane's integration tests; each test file declares
//! `mod support;` and uses what it needs.
//!
//! Owns nothing but test scaffolding: it must not hold assertions about the code under test.

// Every test file compiles this module as its own copy and uses only part of it.
#![allow(dead_code)]

pub mod etcd;
pub mod server;
