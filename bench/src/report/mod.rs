//! The report: Markdown, JSON and plots from one comparison run.

pub mod headline;
pub mod markdown;
pub mod plots;
pub mod table;

use std::path::{Path, PathBuf};

use crate::compare::Comparison;

/// Errors writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The JSON could not be produced.
    #[error("cannot encode the raw numbers as JSON")]
    Json(#[source] serde_json::Error),
}

/// Where the report went.
#[derive(Debug)]
pub struct Written {
    /// report.md.
    pub markdown: PathBuf,
    /// results.json.
    pub json: PathBuf,
    /// Plot files.
    pub plots: Vec<PathBuf>,
    /// Why there are no plots, if so.
    pub plot_problem: Option<String>,
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes report.md, results.json and the plots into `dir`.
pub fn write_report(c: &Comparison, dir: &Path) -> Result<Written, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let (plots, plot_problem) = match plots::write_all(c, dir) {
        Ok(files) => (files, None),
        Err(e) => (Vec::new(), Some(format!("No plots: {e}."))),
    };
    let markdown = dir.join("report.md");
    write(
        &markdown,
        &markdown::render(c, &plots, plot_problem.as_deref()),
    )?;
    let json = dir.join("results.json");
    write(
        &json,
        &serde_json::to_string_pretty(c).map_err(ReportError::Json)?,
    )?;
    Ok(Written {
        markdown,
        json,
        plots: plots.iter().map(|p| dir.join(p)).collect(),
        plot_problem,
    })
}
