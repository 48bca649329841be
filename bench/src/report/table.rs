//! Markdown tables, padded so they also read well on a terminal.

use crate::stats::Summary;

fn is_number(cell: &str) -> bool {
    cell == "–" || cell.parse::<f64>().is_ok()
}

/// A Markdown table with `headers` and `rows`, columns padded to equal width. Columns
/// of numbers are right-aligned, the others left-aligned.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let numeric: Vec<bool> = (0..columns)
        .map(|i| !rows.is_empty() && rows.iter().all(|r| r.get(i).is_some_and(|c| is_number(c))))
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count().max(3)).collect();
    for row in rows {
        for (i, cell) in row.iter().take(columns).enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let pad = |i: usize, text: &str| {
        let fill = widths[i].saturating_sub(text.chars().count());
        if numeric[i] {
            format!("{}{text}", " ".repeat(fill))
        } else {
            format!("{text}{}", " ".repeat(fill))
        }
    };
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = line(headers.iter().enumerate().map(|(i, h)| pad(i, h)).collect());
    out.push_str(&line(
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let dashes = "-".repeat(w - 1);
                if numeric[i] {
                    format!("{dashes}:")
                } else {
                    format!("{dashes}-")
                }
            })
            .collect(),
    ));
    for row in rows {
        let cells = (0..columns)
            .map(|i| pad(i, row.get(i).map_or("", String::as_str)))
            .collect();
        out.push_str(&line(cells));
    }
    out
}

/// A number with a precision that suits its size (3 significant digits or more).
pub fn num(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A difference with its sign, as [`num`] ("+0.42", "-0.03").
pub fn signed(value: f64) -> String {
    let text = num(value);
    if value >= 0.0 {
        format!("+{text}")
    } else {
        text
    }
}

/// median, p90, min, max cells of `summary` (or "–" four times).
pub fn summary_cells(summary: Option<&Summary>) -> Vec<String> {
    match summary {
        Some(s) => vec![num(s.median), num(s.p90), num(s.min), num(s.max)],
        None => vec!["–".into(); 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_signed_shows_the_sign_of_a_difference() {
        assert_eq!(signed(0.123), "+0.12");
        assert_eq!(signed(-12.34), "-12.3");
        assert_eq!(signed(0.0), "+0.00");
    }

    #[test]
    fn test_table_pads_columns_and_right_aligns_numbers() {
        let t = markdown_table(
            &["system", "ms"],
            &[
                vec!["spry".into(), "3.5".into()],
                vec!["runc".into(), "41.25".into()],
            ],
        );
        assert_eq!(
            t,
            "| system |    ms |\n\
             | ------ | ----: |\n\
             | spry   |   3.5 |\n\
             | runc   | 41.25 |\n"
        );
    }

    #[test]
    fn test_short_rows_get_empty_cells() {
        let t = markdown_table(&["a", "b"], &[vec!["x".into()]]);
        assert_eq!(t, "| a   | b   |\n| --- | --- |\n| x   |     |\n");
    }

    #[test]
    fn test_text_columns_are_left_aligned() {
        let t = markdown_table(&["k", "what"], &[vec!["1".into(), "Rss".into()]]);
        assert_eq!(t, "|   k | what |\n| --: | ---- |\n|   1 | Rss  |\n");
    }

    #[test]
    fn test_num_precision_by_magnitude() {
        assert_eq!(num(1234.5), "1234");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
    }

    #[test]
    fn test_missing_summary_cells() {
        assert_eq!(summary_cells(None), vec!["–"; 4]);
    }
}
