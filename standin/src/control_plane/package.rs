//! Deployment packages: a `Code.ZipFile` decoded, hashed and extracted into a directory of its
//! own under the stand-in's code root, with a `bootstrap` at its root made executable; and the
//! `CodeSha256` / `CodeSize` a FunctionConfiguration reports.

use crate::api::{ApiError, ApiResult};
use crate::shared::Shared;
use crate::versions::{Code, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

/// Lambda's limit on a deployment package's unzipped size.
const UNZIPPED_LIMIT: u64 = 262_144_000;

/// Decodes, hashes and extracts a deployment package into a new directory under the code root.
pub(super) async fn unpack(
    shared: &Shared,
    function: &str,
    zip_base64: String,
) -> ApiResult<Arc<Code>> {
    let dir = shared
        .code_root
        .path()
        .join(format!("{function}-{}", uuid::Uuid::new_v4().simple()));
    tokio::task::spawn_blocking(move || unpack_blocking(dir, &zip_base64))
        .await
        .map_err(|e| ApiError::internal(format!("unpacking the code failed: {e}")))?
        .map(Arc::new)
}

fn unpack_blocking(dir: PathBuf, zip_base64: &str) -> ApiResult<Code> {
    use std::os::unix::fs::PermissionsExt as _;

    let zip = BASE64
        .decode(zip_base64.trim())
        .map_err(|e| ApiError::bad_content(format!("Code.ZipFile is not valid base64: {e}")))?;
    let unreadable = |detail: String| {
        ApiError::invalid(format!(
            "Could not unzip uploaded file. Please check your file, then try to upload again. ({detail})"
        ))
    };
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(&zip)).map_err(|e| unreadable(e.to_string()))?;
    let mut unzipped: u64 = 0;
    for i in 0..archive.len() {
        unzipped += archive
            .by_index_raw(i)
            .map_err(|e| unreadable(e.to_string()))?
            .size();
    }
    if unzipped > UNZIPPED_LIMIT {
        return Err(ApiError::invalid(format!(
            "Unzipped size must be smaller than {UNZIPPED_LIMIT} bytes"
        )));
    }
    // The Code owns the directory from here on: an error below removes it.
    let code = Code {
        sha256: BASE64.encode(Sha256::digest(&zip)),
        size: zip.len() as u64,
        dir,
    };
    std::fs::create_dir_all(&code.dir)
        .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", code.dir.display())))?;
    archive
        .extract(&code.dir)
        .map_err(|e| unreadable(e.to_string()))?;
    let bootstrap = code.dir.join("bootstrap");
    if !std::fs::metadata(&bootstrap).is_ok_and(|m| m.is_file()) {
        return Err(ApiError::invalid(
            "The deployment package has no bootstrap: bootstrap not found at the root of the .zip. An OS-only runtime (provided.al2023) runs the executable file named `bootstrap` at the zip's root; put the handler binary there under that name",
        ));
    }
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ApiError::internal(format!("cannot make bootstrap executable: {e}")))?;
    Ok(code)
}

/// `CodeSha256` and `CodeSize`: of the zip for uploaded code, of the binary for versions given
/// at start (hashed once, off the async threads).
pub(super) async fn code_facts(version: &Version) -> (String, u64) {
    if let Some(code) = &version.config.code {
        return (code.sha256.clone(), code.size);
    }
    let size = std::fs::metadata(&version.binary).map_or(0, |m| m.len());
    if let Some(sha) = version.config.binary_sha256.get() {
        return (sha.clone(), size);
    }
    let binary = version.binary.clone();
    let sha = tokio::task::spawn_blocking(move || {
        std::fs::read(&binary)
            .map(|bytes| BASE64.encode(Sha256::digest(&bytes)))
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    let _ = version.config.binary_sha256.set(sha.clone());
    (sha, size)
}

pub(super) fn code_sha256(version: &Version) -> Option<&str> {
    match &version.config.code {
        Some(code) => Some(&code.sha256),
        None => version.config.binary_sha256.get().map(String::as_str),
    }
}
