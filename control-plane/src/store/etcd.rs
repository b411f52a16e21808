//! The distributed backend: a real etcd v3 cluster through `etcd-client`.
