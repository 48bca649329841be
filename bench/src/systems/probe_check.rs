//! The probe's verdict on a VMM (issue 13): before a VM system is compared, it boots
//! the probe guest once with its full output, and it is compared only if every
//! check passed. A VMM whose guest did not pass is listed with the failing checks
//! instead of being timed.

use crate::child::Line;

/// How the probe says it was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeEntry {
    /// Through the PVH entry (`probe: pvh-entry: ok`): QEMU, Firecracker 1.12+.
    Pvh,
    /// Through the Linux 64-bit boot protocol (`probe: boot-params: ok`): spry.
    Linux64,
}

impl ProbeEntry {
    /// For the report.
    pub fn describe(self) -> &'static str {
        match self {
            ProbeEntry::Pvh => "PVH entry (pvh_start, 32-bit protected mode, hvm_start_info)",
            ProbeEntry::Linux64 => "Linux 64-bit boot protocol (startup_64, boot_params in RSI)",
        }
    }
}

/// Errors in the probe's full output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerdictError {
    /// The probe never printed its summary line.
    #[error("the probe printed no summary line")]
    NoSummary,
    /// The probe reported neither entry check.
    #[error("the probe reported neither its PVH entry nor its Linux entry ('probe: pvh-entry: ok' or 'probe: boot-params: ok')")]
    NoEntry,
    /// It was entered, but not the way this VMM must enter it.
    #[error("the probe was entered through the {found:?} entry, not {want:?}")]
    WrongEntry {
        /// What was wanted.
        want: ProbeEntry,
        /// What the probe saw.
        found: ProbeEntry,
    },
    /// Some checks failed.
    #[error("the probe reported '{summary}': {failed}")]
    Failed {
        /// The summary line.
        summary: String,
        /// The failing check lines, ` / `-separated.
        failed: String,
    },
}

/// The probe's verdict from its full output: how it was entered (which must be
/// `want`, if given) and every check passed (`probe: all N checks ok`, no `FAIL`).
pub fn probe_verdict(lines: &[Line], want: Option<ProbeEntry>) -> Result<ProbeEntry, VerdictError> {
    let probe = |l: &&Line| l.text.starts_with("probe: ");
    let summary = lines
        .iter()
        .filter(probe)
        .find(|l| l.text.contains(" checks ok") || l.text.contains(" checks failed"))
        .ok_or(VerdictError::NoSummary)?;
    let failed: Vec<&str> = lines
        .iter()
        .filter(probe)
        .filter(|l| l.text.contains(": FAIL"))
        .map(|l| l.text.as_str())
        .collect();
    let entered = |prefix: &str| lines.iter().any(|l| l.text.starts_with(prefix));
    let found = if entered("probe: pvh-entry: ok") {
        ProbeEntry::Pvh
    } else if entered("probe: boot-params: ok") {
        ProbeEntry::Linux64
    } else {
        return Err(VerdictError::NoEntry);
    };
    if let Some(want) = want.filter(|w| *w != found) {
        return Err(VerdictError::WrongEntry { want, found });
    }
    if !failed.is_empty() || !summary.text.contains(" checks ok") {
        return Err(VerdictError::Failed {
            summary: summary.text.clone(),
            failed: failed.join(" / "),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<Line> {
        text.iter()
            .map(|t| Line {
                text: (*t).to_owned(),
                at_us: 0,
            })
            .collect()
    }

    #[test]
    fn test_pvh_entry_and_every_check_ok_passes() {
        let out = lines(&[
            "qemu-system-x86_64: warning: host doesn't support requested feature",
            "probe: pvh-entry: ok cr0=0x11 eflags=0x2 cs=0x8 ds=0x10",
            "",
            "probe: all 10 checks ok",
        ]);
        assert_eq!(
            probe_verdict(&out, Some(ProbeEntry::Pvh)),
            Ok(ProbeEntry::Pvh)
        );
    }

    #[test]
    fn test_any_entry_is_reported_when_none_is_required() {
        let out = lines(&[
            "probe: boot-params: ok at 0x7000, ELF boot",
            "probe: all 12 checks ok",
        ]);
        assert_eq!(probe_verdict(&out, None), Ok(ProbeEntry::Linux64));
    }

    #[test]
    fn test_the_wrong_entry_is_refused() {
        let out = lines(&[
            "probe: boot-params: ok at 0x7000",
            "probe: all 12 checks ok",
        ]);
        assert_eq!(
            probe_verdict(&out, Some(ProbeEntry::Pvh)),
            Err(VerdictError::WrongEntry {
                want: ProbeEntry::Pvh,
                found: ProbeEntry::Linux64
            })
        );
    }

    #[test]
    fn test_failing_checks_are_named() {
        let out = lines(&[
            "probe: pvh-entry: ok",
            "probe: mptable: FAIL 1 entries missing (table length 288)",
            "probe: interrupt: FAIL no IRQ 4 within 100 ms",
            "probe: 2 of 10 checks failed",
        ]);
        let why = probe_verdict(&out, None).unwrap_err().to_string();
        assert!(why.contains("2 of 10 checks failed"), "{why}");
        assert!(why.contains("mptable: FAIL 1 entries missing"), "{why}");
        assert!(why.contains("interrupt: FAIL no IRQ 4"), "{why}");
    }

    #[test]
    fn test_no_summary_is_a_failure() {
        let out = lines(&["probe: pvh-entry: ok", "garbage"]);
        assert_eq!(probe_verdict(&out, None), Err(VerdictError::NoSummary));
    }
}
