//! Does an ELF kernel carry a given note? (QEMU boots an ELF vmlinux only through its
//! PVH note, so a missing note is the first thing to name when QEMU refuses it.)

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Owner of the PVH entry note.
pub const PVH_OWNER: &[u8] = b"Xen";
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry of the PVH boot protocol.
pub const PVH_TYPE: u32 = 18;

const PT_NOTE: u32 = 4;
/// Note segments larger than this are not read (kernels' are a few hundred bytes).
const MAX_NOTES: u64 = 1 << 20;

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

/// Whether the ELF64 file at `path` has a note of `owner` (without the NUL) and
/// `kind` in a PT_NOTE segment; `None` if it is not a readable little-endian ELF64.
pub fn has_note(path: &Path, owner: &[u8], kind: u32) -> Option<bool> {
    let mut file = File::open(path).ok()?;
    let mut ehdr = [0u8; 64];
    file.read_exact(&mut ehdr).ok()?;
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None;
    }
    let phoff = u64_at(&ehdr, 0x20)?;
    let phentsize = u64::from(u16_at(&ehdr, 0x36)?);
    let phnum = u16_at(&ehdr, 0x38)?;
    let mut phdr = [0u8; 56];
    for i in 0..u64::from(phnum) {
        file.seek(SeekFrom::Start(phoff.checked_add(i * phentsize)?))
            .ok()?;
        file.read_exact(&mut phdr).ok()?;
        if u32_at(&phdr, 0)? != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(&phdr, 0x08)?, u64_at(&phdr, 0x20)?);
        let mut notes = vec![0u8; usize::try_from(size.min(MAX_NOTES)).ok()?];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut notes).ok()?;
        if notes_contain(&notes, owner, kind) {
            return Some(true);
        }
    }
    Some(false)
}

/// Walks 4-aligned ELF notes (namesz, descsz, type, name, desc).
fn notes_contain(mut notes: &[u8], owner: &[u8], kind: u32) -> bool {
    let align4 = |n: usize| n.div_ceil(4) * 4;
    while let (Some(namesz), Some(descsz), Some(ty)) =
        (u32_at(notes, 0), u32_at(notes, 4), u32_at(notes, 8))
    {
        let (Ok(namesz), Ok(descsz)) = (usize::try_from(namesz), usize::try_from(descsz)) else {
            return false;
        };
        let name = notes.get(12..12 + namesz).unwrap_or_default();
        if ty == kind && name.strip_suffix(b"\0") == Some(owner) {
            return true;
        }
        let next = 12 + align4(namesz) + align4(descsz);
        match notes.get(next..) {
            Some(rest) if !rest.is_empty() => notes = rest,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let len = |b: &[u8]| u32::try_from(b.len()).unwrap();
        let mut n = Vec::new();
        n.extend((len(name) + 1).to_le_bytes());
        n.extend(len(desc).to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.push(0);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n.extend(desc);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n
    }

    #[test]
    fn test_pvh_note_is_found_after_the_spry_note() {
        let mut notes = note(b"spry", 1, b"emulator-safe\0");
        notes.extend(note(b"Xen", PVH_TYPE, &0x0100_91b5_u64.to_le_bytes()));
        assert!(notes_contain(&notes, PVH_OWNER, PVH_TYPE));
    }

    #[test]
    fn test_spry_note_alone_is_no_pvh_note_and_truncation_is_safe() {
        let mut notes = note(b"spry", 1, b"emulator-safe\0");
        assert!(!notes_contain(&notes, PVH_OWNER, PVH_TYPE));
        notes.truncate(10);
        assert!(!notes_contain(&notes, PVH_OWNER, PVH_TYPE));
    }

    #[test]
    fn test_non_elf_file_is_none() {
        let path = std::env::temp_dir().join(format!("elf-note-{}", std::process::id()));
        std::fs::write(&path, [0u8; 128]).unwrap();
        assert_eq!(has_note(&path, PVH_OWNER, PVH_TYPE), None);
        let _ = std::fs::remove_file(&path);
    }
}
