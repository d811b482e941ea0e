//! Finding the `sluice` binary to run.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The `sluice` binary: `given`, else `$SLUICE_BIN`, else next to the running executable,
/// else one directory up (a test executable lives in `target/<profile>/deps/`, the binary
/// in `target/<profile>/`).
///
/// Cargo builds `sluice` when it builds the `sluice` package's tests, so `cargo test
/// --workspace` (`make test`) has it in place before any test runs; `cargo test -p
/// sluice-testkit` alone needs `cargo build -p sluice` first.
pub fn find_sluice(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = given.or_else(|| std::env::var_os("SLUICE_BIN").map(PathBuf::from)) {
        if !path.is_file() {
            bail!("no sluice binary at {} (given by --sluice or SLUICE_BIN)", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("sluice");
    let above = exe.parent().and_then(|dir| dir.parent()).map(|dir| dir.join("sluice"));
    for candidate in std::iter::once(beside.clone()).chain(above.clone()) {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no sluice binary at {}{}: build it first (`cargo build -p sluice`, or `--release`; `cargo test --workspace` \
         builds it), or name it (`--sluice PATH` for the loadtest, SLUICE_BIN for tests)",
        beside.display(),
        above.map(|path| format!(" or {}", path.display())).unwrap_or_default()
    )
}
