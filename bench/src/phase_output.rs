//! Where a benchmark phase leaves its results: `<out>/<name>.md` (the report it
//! also prints) and `<name>.json` (its numbers), with both paths printed after it.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// A result file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct PhaseOutputError {
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// Writes `text` to `<out>/<name>.md` and `numbers` as JSON to `<out>/<name>.json`
/// (creating `out`), prints the text and where both went.
pub fn write_phase<T: Serialize>(
    out: &Path,
    name: &str,
    text: &str,
    numbers: &T,
) -> Result<(), PhaseOutputError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| PhaseOutputError { path, source }
    };
    std::fs::create_dir_all(out).map_err(failed(out))?;
    let (md, json) = (
        out.join(format!("{name}.md")),
        out.join(format!("{name}.json")),
    );
    std::fs::write(&md, text).map_err(failed(&md))?;
    let numbers = serde_json::to_vec_pretty(numbers).unwrap_or_default();
    std::fs::write(&json, numbers).map_err(failed(&json))?;
    println!("{text}");
    println!("report:  {}\nnumbers: {}", md.display(), json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_both_files_land_in_a_new_directory() {
        let dir = std::env::temp_dir().join(format!("phase-output-{}", std::process::id()));
        let out = dir.join("bench");
        write_phase(&out, "x", "# x\n", &vec![1, 2]).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("x.md")).unwrap(), "# x\n");
        let json: Vec<u32> =
            serde_json::from_slice(&std::fs::read(out.join("x.json")).unwrap()).unwrap();
        assert_eq!(json, [1, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
