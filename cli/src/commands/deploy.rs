//! `sluice deploy render [--values FILE] [--out DIR]` and `sluice deploy apply --overlay NAME
//! [--dry-run=server] [--skip-missing-apis]`: Sluice's Kubernetes manifests from the values
//! files in `deploy/values/` (the crate `sluice-deploy` builds them).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use sluice_deploy::apply::{ApplyError, ApplyOptions};

use crate::output::{CliError, Format, print_json};

/// Where the values files and the rendered manifests live, relative to the working directory.
const DEPLOY_DIR: &str = "deploy";

#[derive(clap::Subcommand)]
pub enum DeployCommand {
    /// Write the manifests. With no options: every deploy/values/*.yaml into deploy/ (base/
    /// and overlays/<name>/). --values FILE alone prints that file's objects as YAML; --out
    /// DIR writes into DIR instead of deploy/.
    Render {
        /// One values file (default: every deploy/values/*.yaml).
        #[arg(long)]
        values: Option<PathBuf>,
        /// Folder to write base/ and overlays/ into (replaced whole; nothing else is touched).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Server-side apply (field manager `sluice`) of deploy/values/<overlay>.yaml, rendered in
    /// memory, to the cluster of the current kubeconfig.
    Apply {
        /// The overlay: deploy/values/<overlay>.yaml (dev, prod).
        #[arg(long)]
        overlay: String,
        /// `--dry-run=server`: the server checks everything and stores nothing.
        #[arg(long, value_parser = ["server"], require_equals = true)]
        dry_run: Option<String>,
        /// Leave out the objects of kinds the server does not serve (and list those kinds)
        /// instead of failing.
        #[arg(long)]
        skip_missing_apis: bool,
    },
}

fn deploy_error(error: sluice_deploy::DeployError) -> CliError {
    match error {
        sluice_deploy::DeployError::Io { .. } => CliError::failed(error.to_string()),
        _ => CliError::usage(error.to_string()),
    }
}

pub async fn run(command: DeployCommand, format: Format) -> Result<ExitCode, CliError> {
    match command {
        DeployCommand::Render { values, out } => render(values.as_deref(), out.as_deref(), format),
        DeployCommand::Apply { overlay, dry_run, skip_missing_apis } => {
            apply(&overlay, ApplyOptions { dry_run: dry_run.is_some(), skip_missing_apis }, format).await
        }
    }
}

fn render(values: Option<&Path>, out: Option<&Path>, format: Format) -> Result<ExitCode, CliError> {
    let deploy = Path::new(DEPLOY_DIR);
    if let (Some(file), None) = (values, out) {
        // One file, no folder: its objects on stdout, ready for `kubectl apply -f -`.
        let objects = sluice_deploy::render_file(file).map_err(deploy_error)?;
        match format {
            Format::Json => print_json(&json!(objects.iter().map(|object| &object.value).collect::<Vec<_>>()))?,
            Format::Human => {
                for object in &objects {
                    outln!("---\n{}", sluice_deploy::layout::object_yaml(object).trim_end())?;
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let files = match values {
        Some(file) => vec![file.to_path_buf()],
        None => sluice_deploy::values_files(&deploy.join("values")).map_err(deploy_error)?,
    };
    let rendered = sluice_deploy::render_files(&files).map_err(deploy_error)?;
    let dir = out.unwrap_or(deploy);
    sluice_deploy::layout::write(dir, &rendered)
        .map_err(|error| CliError::failed(format!("cannot write {}: {error}", dir.display())))?;
    match format {
        Format::Json => print_json(&json!({
            "out": dir.display().to_string(),
            "files": rendered.keys().map(|path| path.display().to_string()).collect::<Vec<_>>(),
        }))?,
        Format::Human => outln!("wrote {} files into {}", rendered.len(), dir.display())?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn apply(overlay: &str, options: ApplyOptions, format: Format) -> Result<ExitCode, CliError> {
    let valid = !overlay.is_empty() && overlay.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(CliError::usage(format!("--overlay `{overlay}` is not a name of [A-Za-z0-9_-]")));
    }
    let file = Path::new(DEPLOY_DIR).join("values").join(format!("{overlay}.yaml"));
    if !file.is_file() {
        return Err(CliError::usage(format!("--overlay {overlay}: no values file {}", file.display())));
    }
    let objects = sluice_deploy::render_file(&file).map_err(deploy_error)?;
    let client = kube::Client::try_default()
        .await
        .map_err(|error| CliError::usage(format!("no usable Kubernetes configuration (KUBECONFIG): {error}")))?;
    let report = sluice_deploy::apply::apply(&client, &objects, options).await.map_err(|error| match error {
        ApplyError::MissingApis { .. } | ApplyError::Refused { .. } | ApplyError::Encode { .. } => {
            CliError::usage(error.to_string())
        }
        _ => CliError::failed(error.to_string()),
    })?;
    match format {
        Format::Json => print_json(&json!({
            "overlay": overlay,
            "dry_run": options.dry_run,
            "applied": report.applied.iter().map(|applied| json!({
                "object": applied.object,
                "resource_version": applied.resource_version,
            })).collect::<Vec<_>>(),
            "skipped_kinds": report.skipped_kinds,
            "skipped_objects": report.skipped_objects,
        }))?,
        Format::Human => {
            let verb = if options.dry_run { "checked (dry run, nothing stored)" } else { "applied" };
            outln!("{verb}: {} objects of overlay {overlay}", report.applied.len())?;
            if !report.skipped_kinds.is_empty() {
                outln!("skipped kinds the server lacks: {}", report.skipped_kinds.join(", "))?;
                for object in &report.skipped_objects {
                    outln!("  skipped {object}")?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// Every `sluice` container the manifests run, with its args.
    fn sluice_containers(value: &serde_json::Value, found: &mut Vec<(String, Vec<String>)>) {
        match value {
            serde_json::Value::Object(map) => {
                for key in ["containers", "initContainers"] {
                    for container in map.get(key).and_then(|list| list.as_array()).into_iter().flatten() {
                        let image = container["image"].as_str().unwrap_or_default();
                        // Third-party images the manifests run beside Sluice's.
                        let third_party = image.contains("/nats:") || image.starts_with("nats:");
                        if third_party || image.starts_with("jaegertracing/") {
                            continue;
                        }
                        let args = container["args"].as_array().into_iter().flatten();
                        let args = args.map(|arg| arg.as_str().unwrap_or_default().to_owned()).collect();
                        found.push((container["name"].as_str().unwrap_or_default().to_owned(), args));
                    }
                }
                map.values().for_each(|child| sluice_containers(child, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|child| sluice_containers(child, found)),
            _ => {}
        }
    }

    /// The manifests' command lines are ones this `sluice` accepts: a renamed or missing flag
    /// would crash-loop every pod, and no apiserver here runs one to notice.
    #[test]
    fn every_rendered_sluice_container_runs_a_command_line_the_cli_accepts() {
        let values = sluice_deploy::repo_deploy_dir().join("values");
        let files = sluice_deploy::values_files(&values).unwrap();
        assert!(files.len() >= 2, "{files:?}");
        let mut checked = 0;
        for file in files {
            for object in sluice_deploy::render_file(&file).unwrap() {
                let mut containers = Vec::new();
                sluice_containers(&object.value, &mut containers);
                for (name, args) in containers {
                    let line = std::iter::once("sluice".to_owned()).chain(args.iter().cloned());
                    if let Err(error) = crate::Cli::try_parse_from(line) {
                        panic!(
                            "{} {}/{} container {name}: `sluice {}` is refused: {error}",
                            file.display(),
                            object.kind,
                            object.name,
                            args.join(" ")
                        );
                    }
                    checked += 1;
                }
            }
        }
        // Coordinators, declare-pools Jobs, worker Deployments and ScaledJobs of both files.
        assert!(checked >= 8, "only {checked} sluice containers found");
    }
}
