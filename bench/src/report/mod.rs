//! The report: Markdown, JSON and plots from one comparison run.

pub mod headline;
pub mod table;
