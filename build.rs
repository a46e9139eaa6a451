//! Records when tern was built (`TERN_BUILD_EPOCH`, seconds since 1970):
//! a clock before it is certainly wrong (a router before NTP), which the
//! daemon says in its log and in TLS certificate errors. A reproducible
//! build sets `SOURCE_DATE_EPOCH`; otherwise the time of the first build
//! (the script reruns only when that variable changes): a lower bound is
//! all the check needs.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=TERN_BUILD_EPOCH={epoch}");
}
