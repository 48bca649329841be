//! The headline sentences: "spry starts 1.4x slower than a runc container and 3.1x
//! faster than QEMU", each ratio computed from medians of the same run.

/// How to say "smaller is better" comparisons for one metric.
#[derive(Debug, Clone, Copy)]
pub struct Wording {
    /// The verb phrase: "starts", "restarts", "uses".
    pub verb: &'static str,
    /// When spry's value is larger: "slower", "more memory".
    pub worse: &'static str,
    /// When spry's value is smaller: "faster", "less memory".
    pub better: &'static str,
    /// Within 5%: "about as <same> as": "fast", "much memory".
    pub same: &'static str,
}

/// Start time wording.
pub const STARTS: Wording = Wording {
    verb: "starts",
    worse: "slower",
    better: "faster",
    same: "fast",
};

/// Restart time wording.
pub const RESTARTS: Wording = Wording {
    verb: "restarts",
    worse: "slower",
    better: "faster",
    same: "fast",
};

/// Memory wording.
pub const MEMORY: Wording = Wording {
    verb: "uses",
    worse: "more memory",
    better: "less memory",
    same: "much memory",
};

/// CPU wording.
pub const CPU: Wording = Wording {
    verb: "costs",
    worse: "more CPU per start",
    better: "less CPU per start",
    same: "much CPU per start",
};

/// spry's value against one peer's ("1.4x slower than a runc container").
pub fn ratio_phrase(wording: Wording, spry: f64, peer: f64, peer_phrase: &str) -> String {
    if !(spry > 0.0 && peer > 0.0) {
        return format!("cannot be compared with {peer_phrase}");
    }
    let ratio = spry / peer;
    if (ratio - 1.0).abs() < 0.05 {
        return format!("about as {} as {peer_phrase}", wording.same);
    }
    if ratio > 1.0 {
        format!("{ratio:.1}x {} than {peer_phrase}", wording.worse)
    } else {
        format!("{:.1}x {} than {peer_phrase}", 1.0 / ratio, wording.better)
    }
}

/// "spry starts 1.4x slower than a runc container and 3.1x faster than QEMU.", from
/// `(peer phrase, spry's value, the peer's value)` per peer.
pub fn sentence(wording: Wording, peers: &[(String, f64, f64)]) -> Option<String> {
    let parts: Vec<String> = peers
        .iter()
        .map(|(phrase, ours, theirs)| ratio_phrase(wording, *ours, *theirs, phrase))
        .collect();
    join(wording, &parts)
}

fn join(wording: Wording, parts: &[String]) -> Option<String> {
    let joined = match parts {
        [] => return None,
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    };
    Some(format!("spry {} {joined}.", wording.verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_slower_and_faster_in_one_sentence() {
        let s = sentence(
            STARTS,
            &[
                ("a runc container".into(), 14.0, 10.0),
                ("QEMU".into(), 14.0, 43.4),
            ],
        );
        assert_eq!(
            s.as_deref(),
            Some("spry starts 1.4x slower than a runc container and 3.1x faster than QEMU.")
        );
    }

    #[test]
    fn test_three_peers_are_comma_separated() {
        let peers = [
            ("a".to_string(), 2.0, 1.0),
            ("b".to_string(), 2.0, 4.0),
            ("c".to_string(), 2.0, 2.0),
        ];
        assert_eq!(
            sentence(STARTS, &peers).unwrap(),
            "spry starts 2.0x slower than a, 2.0x faster than b and about as fast as c."
        );
    }

    #[test]
    fn test_memory_wording() {
        assert_eq!(
            ratio_phrase(MEMORY, 3.0, 12.0, "QEMU"),
            "4.0x less memory than QEMU"
        );
        assert_eq!(
            ratio_phrase(MEMORY, 10.0, 10.2, "QEMU"),
            "about as much memory as QEMU"
        );
    }

    #[test]
    fn test_no_peers_no_sentence() {
        assert_eq!(sentence(STARTS, &[]), None);
    }

    #[test]
    fn test_zero_values_are_not_compared() {
        assert_eq!(
            ratio_phrase(STARTS, 0.0, 1.0, "QEMU"),
            "cannot be compared with QEMU"
        );
    }
}
