//! Helpers shared by the benchmark binaries (each includes this file with `mod common;`).

#![allow(dead_code, reason = "each benchmark binary uses a different subset")]

use std::path::PathBuf;
use std::time::Duration;

use criterion::Criterion;

/// Size of the payloads and frames the benchmarks use, in bytes.
pub const PAYLOAD_BYTES: usize = 200;

/// Criterion settings that keep one benchmark binary around a minute on a shared machine.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_owned()
}

/// Builds the example plugins (a cargo no-op when they are up to date) and returns the
/// directory holding `<name>.wasm`.
pub fn plugins_dir() -> PathBuf {
    let root = workspace();
    let status = std::process::Command::new("bash")
        .arg(root.join("scripts/build-plugins.sh"))
        .arg("-j1")
        .current_dir(&root)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run scripts/build-plugins.sh");
    assert!(status.success(), "scripts/build-plugins.sh failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |t| root.join(t));
    target.join("plugins")
}

/// `template` with its one `{pad}` replaced by filler text (ASCII letters and spaces: no
/// digits, `@` or escapes) so that the result is exactly `len` bytes long.
pub fn padded(template: &str, len: usize) -> String {
    const FILLER: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod \
                          tempor incididunt ut labore et dolore magna aliqua ut enim ad minim \
                          veniam quis nostrud exercitation ullamco laboris nisi ut aliquip ";
    let fixed = template.len() - "{pad}".len();
    assert!(
        fixed <= len,
        "template {template:?} is longer than {len} bytes"
    );
    let pad: String = FILLER.chars().cycle().take(len - fixed).collect();
    let out = template.replacen("{pad}", &pad, 1);
    assert_eq!(out.len(), len);
    serde_json::from_str::<serde_json::Value>(&out).expect("payload is JSON");
    out
}
