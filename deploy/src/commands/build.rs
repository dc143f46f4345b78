//! `fanout build`: the handler as a Lambda zip, built by cargo-lambda.
//!
//! cargo-lambda is pinned from PyPI and installed by the Makefile into `.tools/venv`; it brings
//! zig, which links for Amazon Linux 2023 from any host.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Arm64,
    #[value(name = "x86_64")]
    X86_64,
}

impl Arch {
    /// The name Lambda uses.
    pub fn lambda_name(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::X86_64 => "x86_64",
        }
    }

    fn cargo_lambda_flag(self) -> &'static str {
        match self {
            Arch::Arm64 => "--arm64",
            Arch::X86_64 => "--x86-64",
        }
    }
}

/// A built zip.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    pub bytes: u64,
    /// Hex SHA-256, as `sha256sum` prints it.
    pub sha256_hex: String,
    /// Base64 SHA-256: Lambda's `CodeSha256`, which says whether code changed.
    pub code_sha256: String,
}

impl Artifact {
    pub fn describe(&self) -> String {
        format!(
            "{}\n  size:   {} bytes ({:.2} MiB)\n  sha256: {}\n  CodeSha256: {}",
            self.path.display(),
            self.bytes,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.sha256_hex,
            self.code_sha256
        )
    }
}

/// Reads a zip and hashes it.
pub fn artifact(path: &Path) -> Result<Artifact> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the zip {}; build it with `fanout build`",
            path.display()
        )
    })?;
    let digest = Sha256::digest(&bytes);
    Ok(Artifact {
        path: path.to_path_buf(),
        bytes: bytes.len() as u64,
        sha256_hex: digest.iter().map(|b| format!("{b:02x}")).collect(),
        code_sha256: base64::engine::general_purpose::STANDARD.encode(digest),
    })
}

/// Where cargo-lambda is: on PATH, or in the project's venv.
fn cargo_lambda_dir(root: &Path) -> Option<PathBuf> {
    let venv = root.join(".tools/venv/bin");
    venv.join("cargo-lambda").is_file().then_some(venv)
}

/// Where cargo-lambda writes the handler's zip, whatever the architecture.
fn cargo_lambda_zip(root: &Path) -> PathBuf {
    root.join("target/lambda/fanout-handler/bootstrap.zip")
}

/// The zip `fanout build` leaves for `arch`: one per architecture, so an arm64 build for AWS
/// and an x86_64 build for the local stand-in do not overwrite each other.
pub fn zip_path(root: &Path, arch: Arch) -> PathBuf {
    root.join(format!(
        "target/lambda/fanout-handler/bootstrap-{}.zip",
        arch.lambda_name()
    ))
}

pub fn build(arch: Arch) -> Result<Artifact> {
    let root = crate::tools::project_root()
        .context("run fanout build inside the project (no Cargo.lock found above this folder)")?;
    let mut command = Command::new("cargo");
    command
        .current_dir(&root)
        .args(["lambda", "build", "--release", "--output-format", "zip"])
        .arg(arch.cargo_lambda_flag())
        .args(["--bin", "fanout-handler"]);
    if let Some(dir) = cargo_lambda_dir(&root) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir];
        paths.extend(std::env::split_paths(&path));
        command.env("PATH", std::env::join_paths(paths)?);
    }
    let status = command.status().context(
        "cannot run cargo; is the Rust toolchain on PATH? (cargo-lambda is installed by `make tools-aws`)",
    )?;
    if !status.success() {
        bail!(
            "cargo lambda build failed ({status}); if cargo says 'no such command: lambda', run \
             `make tools-aws` to install cargo-lambda into .tools/venv"
        );
    }
    let built = cargo_lambda_zip(&root);
    let kept = zip_path(&root, arch);
    std::fs::copy(&built, &kept).with_context(|| {
        format!(
            "cargo lambda build succeeded but {} is missing",
            built.display()
        )
    })?;
    artifact(&kept)
}
