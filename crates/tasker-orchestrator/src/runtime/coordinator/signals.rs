//! Process signals the backpressure controller reads that no crate of ours already measures.

/// Resident memory of this process in bytes, from `/proc/self/statm` (Linux). Hand-written:
/// one line of one file, not worth a system-information crate. `None` elsewhere.
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // 4 KiB pages on the x86-64 and aarch64 Linux machines Tasker runs on.
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_plausible_resident_size_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = super::resident_bytes().expect("statm readable on linux");
            assert!(rss > 1024 * 1024 && rss < 64 * 1024 * 1024 * 1024, "{rss}");
        }
    }
}
