//! `fanout build`: a job crate's binary as a Lambda zip, built by cargo-lambda, like `cargo lambda
//! build`: the crate in the current directory (or `--manifest-path`), `--package` and `--bin` when
//! there is more than one; the zip lands in that crate's `target/lambda/BIN/bootstrap-ARCH.zip`.
//!
//! cargo-lambda is pinned from PyPI and installed by the Makefile into `.tools/venv`; it brings
//! zig, which links for Amazon Linux 2023 from any host.

use crate::outcome::{OutputFormat, finish};
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
    /// The zip as `--output json` shows it: path, size, hex SHA-256 and Lambda's CodeSha256.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "zip": self.path,
            "bytes": self.bytes,
            "sha256": self.sha256_hex,
            "codeSha256": self.code_sha256,
        })
    }

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
    let bytes = std::fs::read(path).map_err(|e| {
        crate::exit::rejected(format!(
            "cannot read the zip {} ({e}); build it with `fanout build`",
            path.display()
        ))
    })?;
    let digest = Sha256::digest(&bytes);
    Ok(Artifact {
        path: path.to_path_buf(),
        bytes: bytes.len() as u64,
        sha256_hex: digest.iter().map(|b| format!("{b:02x}")).collect(),
        code_sha256: base64::engine::general_purpose::STANDARD.encode(digest),
    })
}

/// Where cargo-lambda is, when not on PATH: the fanout checkout's venv (`make tools-aws`).
fn cargo_lambda_dir() -> Option<PathBuf> {
    let roots = [
        crate::tools::project_root(),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")),
    ];
    roots
        .into_iter()
        .flatten()
        .map(|root| root.join(".tools/venv/bin"))
        .find(|venv| venv.join("cargo-lambda").is_file())
}

/// Where `fanout build` leaves the zip of `bin` for `arch`, in the workspace at `root`: one
/// per architecture, so an arm64 build for AWS and an x86_64 build for the local stand-in do
/// not overwrite each other.
pub fn zip_path_of(root: &Path, bin: &str, arch: Arch) -> PathBuf {
    lambda_dir(root)
        .join(bin)
        .join(format!("bootstrap-{}.zip", arch.lambda_name()))
}

/// The zip of this project's `fanout-handler` for `arch` (what `make lambda-zips` builds).
pub fn zip_path(root: &Path, arch: Arch) -> PathBuf {
    zip_path_of(root, "fanout-handler", arch)
}

/// The crate's `target/lambda`, also when CARGO_TARGET_DIR puts the build elsewhere.
fn lambda_dir(root: &Path) -> PathBuf {
    root.join("target/lambda")
}

/// Build a job crate (default: the one in the current directory; here, fanout-handler) as a
/// Lambda zip with cargo-lambda; print its path, size and SHA-256.
///
/// What to build: the crate in the current directory unless told otherwise, like
/// `cargo lambda build`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// CPU architecture of the function.
    #[arg(long, value_enum, default_value = "arm64")]
    pub arch: Arch,
    /// The crate's Cargo.toml (default: the nearest above the current directory).
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// The package to build, in a workspace of several.
    #[arg(long, short = 'p', value_name = "SPEC")]
    pub package: Option<String>,
    /// The binary to build; needed only when there is more than one.
    #[arg(long, value_name = "NAME")]
    pub bin: Option<String>,
    /// text: the zip's path, size and hashes; json: one object on stdout for scripts (cargo's
    /// own output goes to stderr either way).
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

pub fn run(args: Args) -> Result<u8> {
    let built = build(&args).map(|artifact| {
        match args.output {
            OutputFormat::Text => println!("{}", artifact.describe()),
            OutputFormat::Json => println!("{}", artifact.to_json()),
        }
        crate::exit::OK
    });
    Ok(finish(args.output, built))
}

/// A binary a build can pick: its name and its package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinTarget {
    pub name: String,
    pub package: String,
}

/// The workspace as `cargo metadata --no-deps` describes it.
#[derive(Debug, serde::Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    workspace_root: PathBuf,
    #[serde(default)]
    workspace_default_members: Option<Vec<String>>,
}

#[derive(Debug, serde::Deserialize)]
struct MetaPackage {
    name: String,
    id: String,
    manifest_path: PathBuf,
    targets: Vec<MetaTarget>,
    dependencies: Vec<MetaDependency>,
}

#[derive(Debug, serde::Deserialize)]
struct MetaTarget {
    name: String,
    kind: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct MetaDependency {
    name: String,
}

impl MetaPackage {
    fn bins(&self) -> impl Iterator<Item = BinTarget> + '_ {
        self.targets
            .iter()
            .filter(|t| t.kind.iter().any(|k| k == "bin"))
            .map(|t| BinTarget {
                name: t.name.clone(),
                package: self.name.clone(),
            })
    }

    /// A job binary's package: fanout-handler itself or one that depends on it.
    fn serves_a_job(&self) -> bool {
        self.name == "fanout-handler"
            || self.dependencies.iter().any(|d| d.name == "fanout-handler")
    }
}

/// The manifest cargo would use: `given`, else the nearest Cargo.toml above the current
/// directory.
fn manifest(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            return Err(crate::exit::rejected(format!(
                "--manifest-path {} does not name a file; give the crate's Cargo.toml",
                path.display()
            )));
        }
        return std::fs::canonicalize(path)
            .with_context(|| format!("cannot resolve {}", path.display()));
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    cwd.ancestors()
        .map(|dir| dir.join("Cargo.toml"))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            crate::exit::rejected(format!(
                "no Cargo.toml in {} or above: run fanout build in a job crate (fanout new \
                 makes one), or give --manifest-path",
                cwd.display()
            ))
        })
}

fn metadata(manifest: &Path) -> Result<Metadata> {
    let output = Command::new("cargo")
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .context("cannot run cargo; is the Rust toolchain on PATH?")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed for {}: {}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("cargo metadata printed something unexpected")
}

/// Picks the binary to build from the workspace's packages, as `--package` and `--bin` say.
fn pick_bin(
    meta: &Metadata,
    manifest: &Path,
    package: Option<&str>,
    bin: Option<&str>,
) -> Result<BinTarget> {
    let selected: Vec<&MetaPackage> = match package {
        Some(name) => {
            let found: Vec<_> = meta.packages.iter().filter(|p| p.name == name).collect();
            if found.is_empty() {
                return Err(crate::exit::rejected(format!(
                    "no package {name:?} in the workspace at {}; its packages: {}",
                    meta.workspace_root.display(),
                    names(meta.packages.iter().map(|p| p.name.clone()))
                )));
            }
            found
        }
        None => match meta.packages.iter().find(|p| p.manifest_path == manifest) {
            Some(root) => vec![root],
            // A virtual workspace: its default members.
            None => match &meta.workspace_default_members {
                Some(ids) => meta
                    .packages
                    .iter()
                    .filter(|p| ids.contains(&p.id))
                    .collect(),
                None => meta.packages.iter().collect(),
            },
        },
    };
    let all: Vec<BinTarget> = selected.iter().flat_map(|p| p.bins()).collect();
    if let Some(bin) = bin {
        return all.iter().find(|b| b.name == bin).cloned().ok_or_else(|| {
            crate::exit::rejected(format!(
                "no binary {bin:?} in {}; {}",
                where_(package, meta),
                choices(&all)
            ))
        });
    }
    // In a workspace of several packages, the binaries that serve a job are the candidates
    // (here: fanout-handler, not the fanout CLI).
    let jobs: Vec<BinTarget> = selected
        .iter()
        .filter(|p| p.serves_a_job())
        .flat_map(|p| p.bins())
        .collect();
    let candidates = if selected.len() > 1 && !jobs.is_empty() {
        jobs
    } else {
        all
    };
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(crate::exit::rejected(format!(
            "{} has no binary to build; a job crate has a main serving its job (fanout new \
             makes one)",
            where_(package, meta)
        ))),
        several => Err(crate::exit::rejected(format!(
            "{} has {} binaries; pick one with --bin NAME: {}",
            where_(package, meta),
            several.len(),
            names(several.iter().map(|b| b.name.clone()))
        ))),
    }
}

fn where_(package: Option<&str>, meta: &Metadata) -> String {
    match package {
        Some(name) => format!("package {name:?}"),
        None => format!("the crate at {}", meta.workspace_root.display()),
    }
}

fn choices(bins: &[BinTarget]) -> String {
    if bins.is_empty() {
        "it has no binaries".to_owned()
    } else {
        format!(
            "its binaries: {}",
            names(bins.iter().map(|b| b.name.clone()))
        )
    }
}

fn names(names: impl Iterator<Item = String>) -> String {
    let mut names: Vec<String> = names.collect();
    names.sort();
    names.dedup();
    names.join(", ")
}

/// Builds the job crate's binary as a Lambda zip with cargo-lambda; the zip lands in the
/// crate's `target/lambda/BIN/bootstrap-ARCH.zip`.
pub fn build(options: &Args) -> Result<Artifact> {
    let manifest = manifest(options.manifest_path.as_deref())?;
    let meta = metadata(&manifest)?;
    let bin = pick_bin(
        &meta,
        &manifest,
        options.package.as_deref(),
        options.bin.as_deref(),
    )?;
    let root = &meta.workspace_root;
    let mut command = Command::new("cargo");
    command
        .args(["lambda", "build", "--release", "--output-format", "zip"])
        .arg(options.arch.cargo_lambda_flag())
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--package", &bin.package, "--bin", &bin.name])
        // Under the crate's own target/, also when CARGO_TARGET_DIR shares the build.
        .arg("--lambda-dir")
        .arg(lambda_dir(root))
        // Our stdout is the result (the JSON object with --output json); cargo's is progress.
        .stdout(std::io::stderr());
    if let Some(dir) = cargo_lambda_dir() {
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
             `make tools-aws` in the fanout checkout to install cargo-lambda into .tools/venv"
        );
    }
    let built = lambda_dir(root).join(&bin.name).join("bootstrap.zip");
    let kept = zip_path_of(root, &bin.name, options.arch);
    std::fs::copy(&built, &kept).with_context(|| {
        format!(
            "cargo lambda build succeeded but {} is missing",
            built.display()
        )
    })?;
    artifact(&kept)
}

/// The zip `fanout deploy` takes without `--zip`: the one `fanout build --arch ARCH` left for
/// the crate in the current directory, else this project's `fanout-handler` zip.
pub fn default_zip(arch: Arch) -> Result<PathBuf> {
    let fallback = || {
        zip_path(
            &crate::tools::project_root().unwrap_or_else(|| PathBuf::from(".")),
            arch,
        )
    };
    let Ok(manifest) = manifest(None) else {
        return Ok(fallback());
    };
    let Ok(meta) = metadata(&manifest) else {
        return Ok(fallback());
    };
    let wanted = format!("bootstrap-{}.zip", arch.lambda_name());
    let mut found: Vec<PathBuf> = std::fs::read_dir(lambda_dir(&meta.workspace_root))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join(&wanted))
        .filter(|zip| zip.is_file())
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(zip_path_of(
            &meta.workspace_root,
            &pick_bin(&meta, &manifest, None, None)
                .map(|b| b.name)
                .unwrap_or_else(|_| "fanout-handler".to_owned()),
            arch,
        )),
        1 => Ok(found.remove(0)),
        _ => Err(crate::exit::rejected(format!(
            "several {} zips were built here: {}; give the one to deploy with --zip",
            arch.lambda_name(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The binary to run for `--handler PATH`: PATH itself, or, for a Lambda zip from `fanout
/// build`, its `bootstrap` unpacked next to it (`…/bootstrap-x86_64/bootstrap`). Refuses a
/// Linux binary built for another CPU than this machine's, which could not start.
pub fn handler_binary_from(path: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(path).map_err(|e| {
        crate::exit::rejected(format!(
            "cannot read the handler {} ({e}); give a binary or a zip from `fanout build`",
            path.display()
        ))
    })?;
    let (binary, bootstrap) = if bytes.starts_with(b"PK\x03\x04") {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).map_err(|e| {
            crate::exit::rejected(format!("{} is not a readable zip: {e}", path.display()))
        })?;
        let mut entry = archive.by_name("bootstrap").map_err(|_| {
            crate::exit::rejected(format!(
                "{} has no `bootstrap` at its top; give a zip from `fanout build`",
                path.display()
            ))
        })?;
        let mut bootstrap = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bootstrap)
            .with_context(|| format!("cannot unpack bootstrap from {}", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bootstrap".to_owned());
        let dir = path.with_file_name(stem);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let binary = dir.join("bootstrap");
        std::fs::write(&binary, &bootstrap)
            .with_context(|| format!("cannot write {}", binary.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
        }
        (binary, bootstrap)
    } else {
        (path.to_path_buf(), bytes)
    };
    if let Some(arch) = elf_arch(&bootstrap)
        && arch != std::env::consts::ARCH
        && cfg!(target_os = "linux")
    {
        return Err(crate::exit::rejected(format!(
            "{} is built for {arch}, this machine is {}: it cannot run here; build it with \
             `fanout build --arch {}` for the local stack",
            path.display(),
            std::env::consts::ARCH,
            if std::env::consts::ARCH == "aarch64" {
                "arm64"
            } else {
                "x86_64"
            }
        )));
    }
    Ok(binary)
}

/// The CPU an ELF binary is for (as `std::env::consts::ARCH` names it), when it is one of
/// Lambda's two.
fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
    if !bytes.starts_with(b"\x7fELF") || bytes.len() < 20 {
        return None;
    }
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        0x3e => Some("x86_64"),
        0xb7 => Some("aarch64"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, bins: &[&str], deps: &[&str]) -> MetaPackage {
        MetaPackage {
            name: name.into(),
            id: format!("path+file:///w/{name}#0.1.0"),
            manifest_path: PathBuf::from(format!("/w/{name}/Cargo.toml")),
            targets: bins
                .iter()
                .map(|b| MetaTarget {
                    name: (*b).into(),
                    kind: vec!["bin".into()],
                })
                .chain(std::iter::once(MetaTarget {
                    name: name.replace('-', "_"),
                    kind: vec!["lib".into()],
                }))
                .collect(),
            dependencies: deps
                .iter()
                .map(|d| MetaDependency { name: (*d).into() })
                .collect(),
        }
    }

    fn pick(
        meta: &Metadata,
        manifest: &str,
        package: Option<&str>,
        bin: Option<&str>,
    ) -> Result<String> {
        pick_bin(meta, Path::new(manifest), package, bin).map(|b| b.name)
    }

    #[test]
    fn one_binary_needs_no_flag_and_several_are_listed() {
        let meta = Metadata {
            packages: vec![package("wordcount", &["wordcount"], &["fanout-handler"])],
            workspace_root: "/w/wordcount".into(),
            workspace_default_members: None,
        };
        assert_eq!(
            pick(&meta, "/w/wordcount/Cargo.toml", None, None).unwrap(),
            "wordcount"
        );

        let meta = Metadata {
            packages: vec![package("jobs", &["count", "sum"], &["fanout-handler"])],
            workspace_root: "/w/jobs".into(),
            workspace_default_members: None,
        };
        let err = pick(&meta, "/w/jobs/Cargo.toml", None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has 2 binaries; pick one with --bin NAME: count, sum"),
            "{err}"
        );
        assert_eq!(
            pick(&meta, "/w/jobs/Cargo.toml", None, Some("sum")).unwrap(),
            "sum"
        );
        let err = pick(&meta, "/w/jobs/Cargo.toml", None, Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no binary \"nope\"") && err.contains("its binaries: count, sum"),
            "{err}"
        );
        let err = pick(&meta, "/w/jobs/Cargo.toml", Some("other"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no package \"other\"") && err.contains("its packages: jobs"),
            "{err}"
        );
    }

    #[test]
    fn this_workspace_builds_the_handler_not_the_cli() {
        let handler = package("fanout-handler", &["fanout-handler"], &["restate-sdk"]);
        let cli = package("fanout", &["fanout"], &["clap"]);
        let meta = Metadata {
            workspace_default_members: Some(vec![handler.id.clone(), cli.id.clone()]),
            packages: vec![handler, cli],
            workspace_root: "/w".into(),
        };
        assert_eq!(
            pick(&meta, "/w/Cargo.toml", None, None).unwrap(),
            "fanout-handler"
        );
        assert_eq!(
            pick(&meta, "/w/Cargo.toml", None, Some("fanout")).unwrap(),
            "fanout"
        );
        assert_eq!(
            pick(&meta, "/w/Cargo.toml", Some("fanout"), None).unwrap(),
            "fanout"
        );
    }

    #[test]
    fn the_json_of_a_zip_has_its_path_size_and_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("bootstrap.zip");
        std::fs::write(&zip, b"abc").unwrap();
        let json = artifact(&zip).unwrap().to_json();
        assert_eq!(json["zip"], zip.display().to_string());
        assert_eq!(json["bytes"], 3);
        // sha256("abc"), as sha256sum prints it and as Lambda's base64 CodeSha256.
        assert_eq!(
            json["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            json["codeSha256"],
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        let missing = artifact(&dir.path().join("none.zip")).unwrap_err();
        assert_eq!(crate::exit::code_of(&missing), crate::exit::BAD_INPUT);
    }

    #[test]
    fn elf_machines_are_read() {
        let mut header = b"\x7fELF".to_vec();
        header.resize(20, 0);
        header[18] = 0xb7;
        assert_eq!(elf_arch(&header), Some("aarch64"));
        header[18] = 0x3e;
        assert_eq!(elf_arch(&header), Some("x86_64"));
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
    }
}
