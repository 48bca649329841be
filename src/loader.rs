//! Kernel and initrd images: what a file is (ELF `vmlinux` or `bzImage`; Linux, a
//! guest marked emulator-safe such as spry's probe, or anything else) and loading it
//! with linux-loader.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::boot_params::{KERNEL_BOOT_FLAG_MAGIC, KERNEL_HDR_MAGIC};
use crate::arch::x86_64::layout::{
    low_ram_end, CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START,
};
use crate::vstate::memory::GuestMemory;

/// Errors while inspecting or loading boot images.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The image could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither an x86_64 ELF nor a bzImage.
    #[error("{0} is not a kernel: neither an x86_64 ELF vmlinux nor a bzImage")]
    NotAKernel(PathBuf),
    /// linux-loader refused the image.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// linux-loader's reason.
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit below the kernel's limit.
    #[error("initrd of {size} bytes does not fit in guest memory below {limit:#x} (kernel ends at {kernel_end:#x})")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Address the initrd must end below.
        limit: u64,
        /// Where the kernel image ends.
        kernel_end: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy initrd {path} into guest memory")]
    InitrdCopy {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The two kernel image formats spry boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF, entered at its ELF entry point.
    Elf,
    /// Compressed bzImage, entered at its 64-bit entry (load address + 0x200).
    BzImage,
}

/// What kind of guest a kernel image is, as far as the host policy cares: on a PVM
/// host, where KVM emulates every guest instruction, Linux is known to fail early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// Marked as built for KVM's instruction emulator: spry's `spry` ELF note, or a
    /// bzImage whose version string starts with `spry-probe` (the probe guest).
    EmulatorSafe,
    /// Recognisably Linux: any other bzImage, or an ELF carrying Linux's own notes.
    Linux,
    /// Anything else (a unikernel, a small custom kernel): nothing says it cannot run
    /// under the emulator, so it is tried.
    Other,
}

/// What spry learned about a kernel image before booting it.
#[derive(Debug)]
pub struct KernelImage {
    /// Where it came from.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    /// Image format.
    pub format: KernelFormat,
    /// Linux, marked emulator-safe, or neither.
    pub kind: KernelKind,
    /// Longest command line the kernel accepts, including the terminating NUL.
    pub cmdline_capacity: usize,
}

/// ELF note that marks a guest as emulator-safe: owner "spry", type 1.
const SPRY_NOTE_NAME: &[u8] = b"spry\0";
const SPRY_NOTE_TYPE: u32 = 1;
const SPRY_NOTE_DESC: &[u8] = b"emulator-safe";
/// Owner of the notes every Linux vmlinux carries (build salt 0x100, LTO info
/// 0x101, from `init/version.c`); no other kernel uses it.
const LINUX_NOTE_NAME: &[u8] = b"Linux\0";
/// Owner of Xen's notes. A PVH entry note (type 18) alone says nothing about the
/// kernel (spry's probe and unikernels carry one); `XEN_ELFNOTE_GUEST_OS` (type 6)
/// naming "linux" is what Linux with Xen support adds.
const XEN_NOTE_NAME: &[u8] = b"Xen\0";
const XEN_ELFNOTE_GUEST_OS: u32 = 6;
const XEN_GUEST_OS_LINUX: &[u8] = b"linux";
/// Prefix of a bzImage's `kernel_version` string that marks the probe guest.
const PROBE_VERSION_PREFIX: &[u8] = b"spry-probe";

/// bzImage entry for the 64-bit boot protocol, relative to the protected-mode load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

impl KernelImage {
    /// Opens `path` and works out what it is.
    pub fn inspect(path: &Path) -> Result<KernelImage, LoaderError> {
        let read_err = |source| LoaderError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        let mut head = vec![0u8; 0x400];
        let len = read_up_to(&mut file, &mut head).map_err(read_err)?;
        head.truncate(len);

        let (format, kind, cmdline_capacity) = if is_x86_64_elf(&head) {
            let kind = elf_kind(&mut file, &head).map_err(read_err)?;
            (KernelFormat::Elf, kind, CMDLINE_MAX_SIZE)
        } else if let Some(hdr) = bzimage_header(&head) {
            let kind = if bzimage_is_probe(&mut file, &hdr).map_err(read_err)? {
                KernelKind::EmulatorSafe
            } else {
                KernelKind::Linux
            };
            (KernelFormat::BzImage, kind, bzimage_cmdline_capacity(&hdr))
        } else {
            return Err(LoaderError::NotAKernel(path.to_owned()));
        };
        Ok(KernelImage {
            path: path.to_owned(),
            file,
            format,
            kind,
            cmdline_capacity,
        })
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

fn is_x86_64_elf(head: &[u8]) -> bool {
    const EM_X86_64: u16 = 62;
    head.len() >= 64
        && head[..4] == *b"\x7fELF"
        && head[4] == 2 // ELFCLASS64
        && head[5] == 1 // little endian
        && u16::from_le_bytes([head[18], head[19]]) == EM_X86_64
}

/// Reads the PT_NOTE segments of an ELF and tells what they make of it: spry's
/// emulator-safe mark wins over Linux's notes, and an ELF with neither is `Other`.
/// `head` is the start of the file (at least the 64-byte ELF header, checked by the
/// caller); program headers inside it are not read again.
fn elf_kind(file: &mut File, head: &[u8]) -> std::io::Result<KernelKind> {
    const PT_NOTE: u32 = 4;
    const MAX_NOTES_BYTES: u64 = 1 << 20;
    const PHDR_LEN: usize = 56;
    let phoff = u64::from_le_bytes(head[32..40].try_into().unwrap_or_default());
    let phentsize = u64::from(u16::from_le_bytes([head[54], head[55]]));
    let phnum = u64::from(u16::from_le_bytes([head[56], head[57]]));
    let mut kind = KernelKind::Other;
    if phentsize < PHDR_LEN as u64 {
        return Ok(kind);
    }
    for i in 0..phnum {
        let at = phoff.saturating_add(i * phentsize);
        let mut phdr = [0u8; PHDR_LEN];
        let cached = usize::try_from(at)
            .ok()
            .and_then(|at| head.get(at..at.checked_add(PHDR_LEN)?));
        if let Some(bytes) = cached {
            phdr.copy_from_slice(bytes);
        } else {
            file.seek(SeekFrom::Start(at))?;
            if file.read_exact(&mut phdr).is_err() {
                break;
            }
        }
        if u32::from_le_bytes(phdr[0..4].try_into().unwrap_or_default()) != PT_NOTE {
            continue;
        }
        let offset = u64::from_le_bytes(phdr[8..16].try_into().unwrap_or_default());
        let size = u64::from_le_bytes(phdr[32..40].try_into().unwrap_or_default());
        let mut notes = vec![0u8; usize::try_from(size.min(MAX_NOTES_BYTES)).unwrap_or(0)];
        file.seek(SeekFrom::Start(offset))?;
        if file.read_exact(&mut notes).is_err() {
            continue;
        }
        match notes_kind(&notes) {
            KernelKind::EmulatorSafe => return Ok(KernelKind::EmulatorSafe),
            KernelKind::Linux => kind = KernelKind::Linux,
            KernelKind::Other => {}
        }
    }
    Ok(kind)
}

/// One ELF note: owner name (with its NUL), type and descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ElfNote<'a> {
    name: &'a [u8],
    kind: u32,
    desc: &'a [u8],
}

/// The notes of a PT_NOTE segment, up to the first one that does not fit.
fn elf_notes(mut notes: &[u8]) -> impl Iterator<Item = ElfNote<'_>> {
    let align4 = |n: usize| n.div_ceil(4) * 4;
    std::iter::from_fn(move || {
        let word = |i: usize| Some(u32::from_le_bytes(notes.get(i..i + 4)?.try_into().ok()?));
        let size = |i: usize| usize::try_from(word(i)?).ok();
        let (namesz, descsz, kind) = (size(0)?, size(4)?, word(8)?);
        let desc_start = align4(namesz).checked_add(12)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let note = ElfNote {
            name: notes.get(12..namesz.checked_add(12)?)?,
            kind,
            desc: notes.get(desc_start..desc_end)?,
        };
        notes = notes.get(desc_start + align4(descsz)..).unwrap_or_default();
        Some(note)
    })
}

/// What one PT_NOTE segment's notes make of a kernel.
fn notes_kind(notes: &[u8]) -> KernelKind {
    let mut kind = KernelKind::Other;
    for note in elf_notes(notes) {
        if note.name == SPRY_NOTE_NAME
            && note.kind == SPRY_NOTE_TYPE
            && note.desc.starts_with(SPRY_NOTE_DESC)
        {
            return KernelKind::EmulatorSafe;
        }
        let xen_says_linux = note.name == XEN_NOTE_NAME
            && note.kind == XEN_ELFNOTE_GUEST_OS
            && note.desc.starts_with(XEN_GUEST_OS_LINUX);
        if note.name == LINUX_NOTE_NAME || xen_says_linux {
            kind = KernelKind::Linux;
        }
    }
    kind
}

/// The fields of a bzImage setup header spry needs before loading.
#[derive(Debug, Clone, Copy)]
struct BzImageHeader {
    version: u16,
    kernel_version: u16,
    cmdline_size: u32,
}

fn bzimage_header(head: &[u8]) -> Option<BzImageHeader> {
    let u16_at = |o: usize| Some(u16::from_le_bytes([*head.get(o)?, *head.get(o + 1)?]));
    let u32_at = |o: usize| Some(u32::from_le_bytes(head.get(o..o + 4)?.try_into().ok()?));
    if u16_at(0x1fe)? != KERNEL_BOOT_FLAG_MAGIC || u32_at(0x202)? != KERNEL_HDR_MAGIC {
        return None;
    }
    Some(BzImageHeader {
        version: u16_at(0x206)?,
        kernel_version: u16_at(0x20e)?,
        cmdline_size: u32_at(0x238)?,
    })
}

/// `cmdline_size` exists from boot protocol 2.06; older kernels take 255 bytes. A
/// kernel claiming more still gets no more than fits below the MP table.
fn bzimage_cmdline_capacity(hdr: &BzImageHeader) -> usize {
    let max_len = if hdr.version >= 0x0206 {
        hdr.cmdline_size
    } else {
        255
    };
    usize::try_from(max_len)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
        .min(CMDLINE_ROOM)
}

/// Bytes between the command line and the MP table in the EBDA (below 1 MiB, so it
/// fits any `usize`).
#[allow(clippy::cast_possible_truncation)]
const CMDLINE_ROOM: usize = (EBDA_START - CMDLINE_ADDR) as usize;

fn bzimage_is_probe(file: &mut File, hdr: &BzImageHeader) -> std::io::Result<bool> {
    if hdr.kernel_version == 0 {
        return Ok(false);
    }
    let mut version = [0u8; 16];
    file.seek(SeekFrom::Start(u64::from(hdr.kernel_version) + 0x200))?;
    let len = read_up_to(file, &mut version)?;
    Ok(version[..len].starts_with(PROBE_VERSION_PREFIX))
}

/// Where a loaded kernel starts executing, and what the zero page must carry.
#[derive(Debug)]
pub struct LoadedKernel {
    /// Guest-physical entry point for the 64-bit boot protocol.
    pub entry: GuestAddress,
    /// First byte past the kernel image.
    pub end: u64,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Loads `kernel` into guest memory the way its format asks.
pub fn load_kernel(
    mem: &GuestMemory,
    kernel: &mut KernelImage,
) -> Result<LoadedKernel, LoaderError> {
    let load_err = |source| LoaderError::Load {
        path: kernel.path.clone(),
        source,
    };
    let result = match kernel.format {
        KernelFormat::Elf => {
            Elf::load(mem, None, &mut kernel.file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?
        }
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut kernel.file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?
        }
    };
    let entry = match kernel.format {
        KernelFormat::Elf => result.kernel_load,
        KernelFormat::BzImage => result
            .kernel_load
            .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
            .ok_or(LoaderError::Load {
                path: kernel.path.clone(),
                source: linux_loader::loader::Error::MemoryOverflow,
            })?,
    };
    Ok(LoadedKernel {
        entry,
        end: result.kernel_end,
        setup_header: result.setup_header,
    })
}

/// An initrd, opened and measured at config time.
#[derive(Debug)]
pub struct InitrdImage {
    /// Where it came from.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    /// Its size in bytes.
    pub size: u64,
}

/// Where the initrd landed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Page-aligned guest-physical address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Highest address an initrd may reach when the kernel does not say
/// (`initrd_addr_max` of boot protocol 2.03+).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE_SIZE: u64 = 0x1000;

/// Places the initrd as high as possible in low memory, page-aligned, above the
/// kernel and below the kernel's `initrd_addr_max`, the way bootloaders do.
pub fn initrd_address(
    mem_size: u64,
    size: u64,
    kernel_end: u64,
    initrd_addr_max: Option<u32>,
) -> Option<u64> {
    let addr = initrd_limit(mem_size, initrd_addr_max).checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end.next_multiple_of(PAGE_SIZE)).then_some(addr)
}

/// The address the initrd must end below: the kernel's `initrd_addr_max` (0 or
/// absent: the boot protocol's default) and the end of low RAM.
fn initrd_limit(mem_size: u64, initrd_addr_max: Option<u32>) -> u64 {
    initrd_addr_max
        .map(u64::from)
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX)
        .saturating_add(1)
        .min(low_ram_end(mem_size))
}

/// Copies the initrd into guest memory at [`initrd_address`].
pub fn load_initrd(
    mem: &GuestMemory,
    initrd: &mut InitrdImage,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, LoaderError> {
    let mem_size: u64 = mem.iter().map(|r| r.len()).sum();
    let addr_max = kernel.setup_header.map(|h| h.initrd_addr_max);
    let addr = initrd_address(mem_size, initrd.size, kernel.end, addr_max).ok_or(
        LoaderError::InitrdTooLarge {
            size: initrd.size,
            limit: initrd_limit(mem_size, addr_max),
            kernel_end: kernel.end,
        },
    )?;
    let copy_err = |source| LoaderError::InitrdCopy {
        path: initrd.path.clone(),
        source,
    };
    initrd
        .file
        .seek(SeekFrom::Start(0))
        .map_err(|e| copy_err(vm_memory::GuestMemoryError::IOError(e)))?;
    let len = usize::try_from(initrd.size).unwrap_or(usize::MAX);
    mem.read_exact_volatile_from(GuestAddress(addr), &mut initrd.file, len)
        .map_err(copy_err)?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size: initrd.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    fn temp_file_with(bytes: &[u8]) -> vmm_sys_util::tempfile::TempFile {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        f.as_file().write_all(bytes).unwrap();
        f
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&u32::try_from(name.len()).unwrap().to_le_bytes());
        v.extend_from_slice(&u32::try_from(desc.len()).unwrap().to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend_from_slice(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    /// An x86_64 ELF header and one PT_NOTE program header over `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        const EHDR_LEN: u64 = 64;
        const PHDR_LEN: u64 = 56;
        let mut elf = vec![0u8; 64];
        elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\0");
        elf[18] = 62; // EM_X86_64
        elf[32..40].copy_from_slice(&EHDR_LEN.to_le_bytes()); // e_phoff
        elf[54] = 56; // e_phentsize
        elf[56] = 1; // e_phnum
        let mut phdr = vec![0u8; 56];
        phdr[0..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        phdr[8..16].copy_from_slice(&(EHDR_LEN + PHDR_LEN).to_le_bytes()); // p_offset
        phdr[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes()); // p_filesz
        elf.extend(phdr);
        elf.extend_from_slice(notes);
        elf
    }

    fn inspect(bytes: &[u8]) -> KernelImage {
        let f = temp_file_with(bytes);
        KernelImage::inspect(f.as_path()).unwrap()
    }

    /// A bzImage setup header: boot flag, "HdrS", protocol 2.15, the version string
    /// at 0x500 when `version` is given.
    fn bzimage(version: Option<&[u8]>) -> Vec<u8> {
        let mut image = vec![0u8; 0x1000];
        image[0x1fe..0x200].copy_from_slice(&KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
        image[0x202..0x206].copy_from_slice(&KERNEL_HDR_MAGIC.to_le_bytes());
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        if let Some(version) = version {
            image[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
            image[0x500..0x500 + version.len()].copy_from_slice(version);
        }
        image
    }

    /// The notes of the project's Linux 6.1 vmlinux, in its order (`readelf -n
    /// build/guest/vmlinux`): GNU build id, Linux's LTO info (0x101) and build salt
    /// (0x100), Xen's PVH entry (18).
    fn linux_notes() -> Vec<u8> {
        let mut notes = note(b"GNU\0", 3, &[0xc5; 20]);
        notes.extend(note(b"Linux\0", 0x101, &0u32.to_le_bytes()));
        notes.extend(note(b"Linux\0", 0x100, b"\0"));
        notes.extend(note(b"Xen\0", 18, &0x0100_0500u64.to_le_bytes()));
        notes
    }

    #[test]
    fn test_spry_note_is_found_after_other_notes() {
        let mut notes = note(b"GNU\0", 3, &[0xab; 20]);
        notes.extend(note(SPRY_NOTE_NAME, SPRY_NOTE_TYPE, b"emulator-safe"));
        assert_eq!(notes_kind(&notes), KernelKind::EmulatorSafe);
    }

    #[test]
    fn test_notes_owned_by_linux_mean_linux() {
        assert_eq!(notes_kind(&linux_notes()), KernelKind::Linux);
    }

    #[test]
    fn test_xen_guest_os_linux_note_means_linux() {
        let notes = note(b"Xen\0", XEN_ELFNOTE_GUEST_OS, b"linux\0");
        assert_eq!(notes_kind(&notes), KernelKind::Linux);
    }

    #[test]
    fn test_pvh_entry_note_alone_is_not_linux() {
        let notes = note(b"Xen\0", 18, &0x0100_0000u64.to_le_bytes());
        assert_eq!(notes_kind(&notes), KernelKind::Other);
    }

    #[test]
    fn test_other_xen_guest_os_is_not_linux() {
        let notes = note(b"Xen\0", XEN_ELFNOTE_GUEST_OS, b"Mini-OS\0");
        assert_eq!(notes_kind(&notes), KernelKind::Other);
    }

    #[test]
    fn test_spry_mark_wins_over_linux_notes() {
        let mut notes = linux_notes();
        notes.extend(note(SPRY_NOTE_NAME, SPRY_NOTE_TYPE, b"emulator-safe"));
        assert_eq!(notes_kind(&notes), KernelKind::EmulatorSafe);
    }

    #[test]
    fn test_truncated_note_is_not_a_mark_and_does_not_panic() {
        let mut notes = note(SPRY_NOTE_NAME, SPRY_NOTE_TYPE, b"emulator-safe");
        notes.truncate(20);
        assert_eq!(notes_kind(&notes), KernelKind::Other);
    }

    #[test]
    fn test_note_sizes_near_u32_max_do_not_panic() {
        let mut notes = Vec::new();
        notes.extend_from_slice(&u32::MAX.to_le_bytes());
        notes.extend_from_slice(&u32::MAX.to_le_bytes());
        notes.extend_from_slice(&1u32.to_le_bytes());
        notes.extend_from_slice(b"Linux\0\0\0");
        assert_eq!(notes_kind(&notes), KernelKind::Other);
    }

    #[test]
    fn test_elf_with_linux_notes_is_linux() {
        let kernel = inspect(&elf_with_notes(&linux_notes()));
        assert_eq!(kernel.format, KernelFormat::Elf);
        assert_eq!(kernel.kind, KernelKind::Linux);
    }

    #[test]
    fn test_elf_without_notes_is_other_and_may_be_tried() {
        let kernel = inspect(&elf_with_notes(&[]));
        assert_eq!(kernel.kind, KernelKind::Other);
    }

    #[test]
    fn test_elf_with_only_a_pvh_note_is_other() {
        let notes = note(b"Xen\0", 18, &0x0100_0000u64.to_le_bytes());
        assert_eq!(inspect(&elf_with_notes(&notes)).kind, KernelKind::Other);
    }

    #[test]
    fn test_elf_with_spry_note_is_emulator_safe() {
        let notes = note(SPRY_NOTE_NAME, SPRY_NOTE_TYPE, b"emulator-safe");
        assert_eq!(
            inspect(&elf_with_notes(&notes)).kind,
            KernelKind::EmulatorSafe
        );
    }

    #[test]
    fn test_elf_whose_notes_lie_past_the_end_is_other() {
        let mut elf = elf_with_notes(&linux_notes());
        elf.truncate(64 + 56 + 8);
        assert_eq!(inspect(&elf).kind, KernelKind::Other);
    }

    #[test]
    fn test_bzimage_is_linux() {
        let kernel = inspect(&bzimage(Some(b"6.1.0 (x)\0")));
        assert_eq!(kernel.format, KernelFormat::BzImage);
        assert_eq!(kernel.kind, KernelKind::Linux);
    }

    #[test]
    fn test_bzimage_without_version_string_is_linux() {
        assert_eq!(inspect(&bzimage(None)).kind, KernelKind::Linux);
    }

    /// What `tools/devtool guest` and `tools/devtool probe` built, where they did.
    fn built(artifacts: &[&str]) -> Vec<(PathBuf, KernelKind)> {
        let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("build");
        artifacts
            .iter()
            .map(|a| build.join(a))
            .filter(|p| p.is_file())
            .map(|p| {
                let kind = KernelImage::inspect(&p).unwrap().kind;
                (p, kind)
            })
            .collect()
    }

    #[test]
    fn test_project_linux_guest_is_linux_where_built() {
        for (path, kind) in built(&["guest/vmlinux", "guest/bzImage"]) {
            assert_eq!(kind, KernelKind::Linux, "{}", path.display());
        }
    }

    #[test]
    fn test_probe_guest_is_emulator_safe_where_built() {
        for (path, kind) in built(&["probe/vmlinux", "probe/bzImage"]) {
            assert_eq!(kind, KernelKind::EmulatorSafe, "{}", path.display());
        }
    }

    #[test]
    fn test_text_file_is_not_a_kernel() {
        let f = temp_file_with(b"root:x:0:0:root:/root:/bin/sh\n");
        let err = KernelImage::inspect(f.as_path()).unwrap_err();
        assert!(matches!(err, LoaderError::NotAKernel(_)), "{err}");
    }

    #[test]
    fn test_empty_file_is_not_a_kernel() {
        let f = temp_file_with(b"");
        assert!(matches!(
            KernelImage::inspect(f.as_path()),
            Err(LoaderError::NotAKernel(_))
        ));
    }

    #[test]
    fn test_bzimage_header_gives_format_and_cmdline_capacity() {
        let mut image = bzimage(Some(b"6.1.0 (x)\0"));
        image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        let kernel = inspect(&image);
        assert_eq!(kernel.format, KernelFormat::BzImage);
        assert_eq!(kernel.cmdline_capacity, 2048);
    }

    #[test]
    fn test_huge_declared_cmdline_size_stops_below_the_mp_table() {
        let mut image = bzimage(None);
        image[0x238..0x23c].copy_from_slice(&u32::MAX.to_le_bytes());
        let kernel = inspect(&image);
        assert_eq!(kernel.cmdline_capacity as u64, EBDA_START - CMDLINE_ADDR);
    }

    #[test]
    fn test_bzimage_with_probe_version_is_emulator_safe() {
        let kernel = inspect(&bzimage(Some(b"spry-probe 1")));
        assert_eq!(kernel.kind, KernelKind::EmulatorSafe);
    }

    #[test]
    fn test_initrd_goes_to_top_of_low_memory_page_aligned() {
        assert_eq!(
            initrd_address(128 * MIB, 5000, 2 * MIB, None),
            Some(128 * MIB - 0x2000)
        );
    }

    #[test]
    fn test_initrd_of_large_guest_stays_below_2g_limit() {
        assert_eq!(
            initrd_address(6 << 30, 0x1000, 2 * MIB, None),
            Some(0x8000_0000 - 0x1000)
        );
    }

    #[test]
    fn test_initrd_respects_kernel_initrd_addr_max() {
        assert_eq!(
            initrd_address(6 << 30, 0x1000, 2 * MIB, Some(0xbfff_ffff)),
            Some(0xc000_0000 - 0x1000)
        );
    }

    #[test]
    fn test_initrd_that_would_overlap_the_kernel_is_refused() {
        assert_eq!(initrd_address(32 * MIB, 31 * MIB, 2 * MIB, None), None);
    }
}
