//! How a VMM mapped guest RAM: KVM maps guest memory with 2 MiB nested page-table
//! entries only where the host backs it with a huge page and the host address and
//! the guest address are congruent modulo 2 MiB; a mapping that starts off a 2 MiB
//! boundary gets 4 KiB entries only, one nested page fault per 4 KiB the guest
//! touches.

use serde::Serialize;

use crate::procfs::kib_field;

const HUGE: u64 = 2 << 20;

/// The guest-RAM mapping of a VMM process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuestMapping {
    /// Its host virtual address.
    pub start: u64,
    /// `start` modulo 2 MiB (0: aligned, so guest 2 MiB pages can be host 2 MiB
    /// pages).
    pub offset_in_2m: u64,
    /// Transparent huge pages in it, KiB.
    pub anon_huge_kib: u64,
}

/// The first mapping of exactly `guest_kib` in `/proc/<pid>/smaps` text.
pub fn parse_guest_mapping(smaps: &str, guest_kib: u64) -> Option<GuestMapping> {
    let mut start = None;
    let mut found: Option<GuestMapping> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((from, _)) = first.split_once('-') {
            if let Ok(address) = u64::from_str_radix(from, 16) {
                if found.is_some() {
                    break;
                }
                start = Some(address);
                continue;
            }
        }
        if let Some(size) = kib_field(line, "Size") {
            if size == guest_kib {
                found = start.map(|start| GuestMapping {
                    start,
                    offset_in_2m: start % HUGE,
                    anon_huge_kib: 0,
                });
            }
        } else if let (Some(mapping), Some(huge)) =
            (found.as_mut(), kib_field(line, "AnonHugePages"))
        {
            mapping.anon_huge_kib = huge;
        }
    }
    found
}

/// The guest-RAM mapping of process `pid`, if one of `guest_kib` is there.
pub fn guest_mapping(pid: i32, guest_kib: u64) -> Option<GuestMapping> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    parse_guest_mapping(&smaps, guest_kib)
}

impl GuestMapping {
    /// "at 0x7f5a40200000 (2 MiB-aligned), 24 MiB in transparent huge pages".
    pub fn describe(&self) -> String {
        let aligned = if self.offset_in_2m == 0 {
            "2 MiB-aligned".to_owned()
        } else {
            format!("{} KiB past a 2 MiB boundary", self.offset_in_2m >> 10)
        };
        format!(
            "at {:#x} ({aligned}), {} MiB in transparent huge pages",
            self.start,
            self.anon_huge_kib >> 10
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 123 /usr/bin/spry
Size:                132 kB
Rss:                 132 kB
AnonHugePages:         0 kB
7f3c5a5ff000-7f3c6a5ff000 rw-p 00000000 00:00 0
Size:             262144 kB
KernelPageSize:        4 kB
Rss:               24000 kB
AnonHugePages:     20480 kB
THPeligible:    1
7f3c6a600000-7f3c7a600000 rw-p 00000000 00:00 0
Size:             262144 kB
AnonHugePages:    262144 kB
";

    #[test]
    fn test_the_first_mapping_of_guest_size_is_found() {
        let m = parse_guest_mapping(SMAPS, 262_144).unwrap();
        assert_eq!(m.start, 0x7f3c_5a5f_f000);
        assert_eq!(m.offset_in_2m, 0x1f_f000);
        assert_eq!(m.anon_huge_kib, 20_480);
        assert!(
            m.describe().contains("2044 KiB past a 2 MiB boundary"),
            "{}",
            m.describe()
        );
        assert_eq!(parse_guest_mapping(SMAPS, 1024), None);
    }

    #[test]
    fn test_aligned_mapping() {
        let text = "7f0000200000-7f0010200000 rw-p 00000000 00:00 0\nSize: 262144 kB\n";
        let m = parse_guest_mapping(text, 262_144).unwrap();
        assert_eq!(m.offset_in_2m, 0);
        assert!(m.describe().contains("(2 MiB-aligned)"));
    }
}
