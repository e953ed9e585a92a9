//! Test-only fault injection, compiled into debug builds only (release builds, which
//! are what the Dockerfile ships, have no trace of it): with
//! `KVSYNC_TEST_FAULT=<point>:<key>`, the task passing `point` with that key panics, so
//! tests can check that a dying task takes the node down instead of leaving it serving
//! with replication dead.

#[cfg(debug_assertions)]
pub fn point(name: &str, key: &str) {
    use std::sync::OnceLock;
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    let fault = FAULT.get_or_init(|| std::env::var("KVSYNC_TEST_FAULT").ok());
    if let Some((at, on)) = fault.as_deref().and_then(|f| f.split_once(':')) {
        if at == name && on == key {
            panic!("test fault injected at {name} for key {key:?}");
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str, _key: &str) {}
