//! Checks on the workspace's own metadata.

use serde_json::Value;

/// `1.90` and `1.90.0` alike, as (major, minor, patch).
fn version(raw: &str) -> [u64; 3] {
    let mut parts = raw.split('.').map(|p| p.parse().unwrap_or(0));
    [0; 3].map(|_| parts.next().unwrap_or(0))
}

/// The declared rust-version must be what the dependencies really need: a lower one lets
/// cargo's MSRV-aware resolver hold dependencies back to versions for a compiler that cannot
/// build the workspace anyway (it held aws-sdk-lambda at 1.86 under a false 1.85).
#[test]
fn the_declared_rust_version_covers_every_dependency() {
    // This machine's platform only: packages of other targets (e.g. r-efi for UEFI) need not
    // be downloaded, and an offline metadata call would fail on them.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &host,
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let declared = packages
        .iter()
        .find(|p| p["name"] == "fanout-handler")
        .and_then(|p| p["rust_version"].as_str())
        .expect("the workspace declares a rust-version");
    let needed = packages
        .iter()
        .filter(|p| !members.contains(&p["id"].as_str().unwrap_or_default()))
        .filter_map(|p| Some((p["rust_version"].as_str()?, p["name"].as_str()?)))
        .max_by_key(|(v, _)| version(v))
        .expect("dependencies declare rust-versions");
    assert!(
        version(declared) >= version(needed.0),
        "rust-version is {declared}, but {} needs {}",
        needed.1,
        needed.0
    );
}
