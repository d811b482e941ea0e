//! Sluice on Kubernetes: typed values files (`deploy/values/<overlay>.yaml`) rendered into
//! manifests built from `k8s-openapi` types (KEDA's objects from [`keda`]'s structs), laid
//! out for kustomize under `deploy/`, and applied with server-side apply (field manager
//! `sluice`). Rendering is pure; [`apply`] is the only part that talks to a cluster.

pub mod apply;
pub mod dashboard;
pub mod keda;
pub mod layout;
pub mod monitor;
pub mod render;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use render::{Object, RenderError};
pub use values::{Values, ValuesError};

/// Most values files one `deploy/values/` folder holds.
pub const VALUES_FILES_MAX: usize = 32;

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Values(#[from] ValuesError),
    #[error("{file}: {source}")]
    Render { file: String, source: RenderError },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{dir} holds no values files (*.yaml)")]
    NoValues { dir: String },
    #[error("{dir} holds more than {VALUES_FILES_MAX} values files")]
    TooManyValues { dir: String },
}

impl DeployError {
    /// Only I/O can go better on a second try.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Io { .. })
    }
}

/// The overlay a values file renders: its file stem (`prod.yaml` → `prod`).
pub fn overlay_name(path: &Path) -> String {
    path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The values files of a folder, sorted.
pub fn values_files(dir: &Path) -> Result<Vec<PathBuf>, DeployError> {
    let io = |source| DeployError::Io { path: dir.display().to_string(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|ext| ext == "yaml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DeployError::NoValues { dir: dir.display().to_string() });
    }
    if files.len() > VALUES_FILES_MAX {
        return Err(DeployError::TooManyValues { dir: dir.display().to_string() });
    }
    Ok(files)
}

/// Reads and renders one values file.
pub fn render_file(path: &Path) -> Result<Vec<Object>, DeployError> {
    let values = Values::read(path)?;
    render::objects(&values).map_err(|source| DeployError::Render { file: path.display().to_string(), source })
}

/// Renders values files into the files of `deploy/` (base + one overlay per file).
pub fn render_files(paths: &[PathBuf]) -> Result<layout::Files, DeployError> {
    let mut overlays = BTreeMap::new();
    for path in paths {
        overlays.insert(overlay_name(path), render_file(path)?);
    }
    Ok(layout::files(&overlays))
}

/// The repository's `deploy/` folder (for tests and the drift check).
pub fn repo_deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}
