//! The instruction sets this build was compiled to use, checked at start.
//!
//! Why: x86-64 builds use SSE4.2 and PCLMULQDQ (`.cargo/config.toml`) so that
//! RocksDB computes its CRC32C checksums in hardware. RocksDB picks that code when
//! it is compiled, not at run time, so on a CPU without those instructions the
//! binary would die of an illegal instruction at its first write (or earlier,
//! wherever the compiler used them). It refuses to start instead, naming what is
//! missing and how to build for that CPU. A build without the flags checks nothing.

/// The instruction sets this build requires and this CPU lacks (empty: it can run).
pub fn missing_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut missing = Vec::new();
    #[cfg(all(target_arch = "x86_64", target_feature = "sse4.2"))]
    if !std::arch::is_x86_feature_detected!("sse4.2") {
        missing.push("sse4.2");
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "pclmulqdq"))]
    if !std::arch::is_x86_feature_detected!("pclmulqdq") {
        missing.push("pclmulqdq");
    }
    missing
}

/// Why this binary cannot run on this CPU, if it cannot.
pub fn refusal() -> Option<String> {
    let missing = missing_features();
    (!missing.is_empty()).then(|| {
        format!(
            "this build of session-queue uses CPU instructions this CPU lacks ({}); \
             build it for this CPU with: RUSTFLAGS=\"-C target-cpu=x86-64\" cargo build --release",
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine running the tests runs the nodes: it must have what the build
    /// uses (or the nodes of every other test would refuse to start).
    #[test]
    fn this_cpu_has_what_the_build_uses() {
        assert_eq!(missing_features(), Vec::<&str>::new());
        assert_eq!(refusal(), None);
    }
}
