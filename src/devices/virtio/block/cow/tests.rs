//! The copy-on-write layer against a reference model: a plain `Vec<u8>` disk that
//! every operation is mirrored on. Seeded, so a failure reproduces.

use std::io::Write;

use vmm_sys_util::tempfile::TempFile;

use super::*;

/// 16 blocks and three sectors: the last block is a short one.
const SIZE: u64 = 16 * BLOCK_SIZE + 3 * 512;
/// Random operations per run.
const OPS: usize = 4000;

/// splitmix64: a tiny seeded generator, enough to spread offsets and lengths.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

fn base_image(rng: &mut Rng) -> (TempFile, Vec<u8>) {
    let file = TempFile::new().unwrap();
    let content = rng.bytes(usize::try_from(SIZE).unwrap());
    file.as_file().write_all(&content).unwrap();
    (file, content)
}

fn checksum(path: &Path) -> u32 {
    crc32fast::hash(&std::fs::read(path).unwrap())
}

fn memory_disk(base: &TempFile) -> CowDisk {
    let file = open_base(base.as_path()).unwrap();
    CowDisk::in_memory(file, base.as_path().to_owned(), SIZE)
}

fn file_disk(base: &TempFile, overlay: &Path) -> CowDisk {
    let file = open_base(base.as_path()).unwrap();
    CowDisk::with_file(file, base.as_path().to_owned(), SIZE, overlay).unwrap()
}

/// A random range: mostly small and unaligned, sometimes several blocks, sometimes
/// exactly one aligned block; always inside the disk.
fn random_range(rng: &mut Rng) -> (u64, usize) {
    let (offset, len) = match rng.below(4) {
        0 => (rng.below(SIZE / BLOCK_SIZE) * BLOCK_SIZE, BLOCK_SIZE),
        1 => (rng.below(SIZE), rng.below(3 * BLOCK_SIZE + 700)),
        2 => (rng.below(SIZE / 512) * 512, 512 * (1 + rng.below(12))),
        _ => (rng.below(SIZE), rng.below(64)),
    };
    let len = len.min(SIZE - offset);
    (offset, usize::try_from(len).unwrap())
}

/// Runs `OPS` random reads and writes (and a few discards) on `disk` and on the
/// model, comparing every read and, at the end, the whole disk.
fn run_against_model(disk: &mut CowDisk, model: &mut Vec<u8>, base: &[u8], seed: u64) {
    let mut rng = Rng(seed);
    for op in 0..OPS {
        let (offset, len) = random_range(&mut rng);
        let at = usize::try_from(offset).unwrap();
        match rng.below(100) {
            0 => {
                disk.discard_changes().unwrap();
                model.copy_from_slice(base);
            }
            1..=45 => {
                let data = rng.bytes(len);
                disk.write_at(&data, offset).unwrap();
                model[at..at + len].copy_from_slice(&data);
            }
            _ => {
                let mut got = vec![0xeeu8; len];
                disk.read_at(&mut got, offset).unwrap();
                assert!(
                    got == model[at..at + len],
                    "seed {seed} op {op}: read {offset:#x}+{len:#x} differs from the model"
                );
            }
        }
    }
    let mut whole = vec![0u8; usize::try_from(SIZE).unwrap()];
    disk.read_at(&mut whole, 0).unwrap();
    assert!(whole == *model, "seed {seed}: final disk differs");
}

#[test]
fn test_memory_overlay_matches_the_model_and_leaves_the_base_alone() {
    for seed in [1u64, 2, 3] {
        let mut rng = Rng(seed);
        let (base, content) = base_image(&mut rng);
        let before = checksum(base.as_path());
        let mut disk = memory_disk(&base);
        let mut model = content.clone();

        run_against_model(&mut disk, &mut model, &content, seed);

        assert_eq!(checksum(base.as_path()), before, "seed {seed}");
    }
}

#[test]
fn test_file_overlay_matches_the_model_and_leaves_the_base_alone() {
    for seed in [11u64, 12, 13] {
        let mut rng = Rng(seed);
        let (base, content) = base_image(&mut rng);
        let before = checksum(base.as_path());
        let overlay = TempFile::new().unwrap();
        let mut disk = file_disk(&base, overlay.as_path());
        let mut model = content.clone();

        run_against_model(&mut disk, &mut model, &content, seed);

        assert_eq!(checksum(base.as_path()), before, "seed {seed}");
    }
}

#[test]
fn test_file_overlay_reopened_keeps_its_changes() {
    let mut rng = Rng(21);
    let (base, content) = base_image(&mut rng);
    let overlay = TempFile::new().unwrap();
    let mut model = content.clone();
    let mut disk = file_disk(&base, overlay.as_path());
    run_against_model(&mut disk, &mut model, &content, 21);
    disk.flush().unwrap();
    drop(disk);

    let mut again = file_disk(&base, overlay.as_path());
    let mut whole = vec![0u8; model.len()];
    again.read_at(&mut whole, 0).unwrap();

    assert!(whole == model);
    run_against_model(&mut again, &mut model, &content, 22);
}

#[test]
fn test_unaligned_write_across_a_block_boundary_keeps_the_neighbours() {
    let mut rng = Rng(31);
    let (base, content) = base_image(&mut rng);
    let mut disk = memory_disk(&base);
    // 100 bytes ending 40 bytes into block 1.
    let offset = BLOCK_SIZE - 60;

    disk.write_at(&[0xab; 100], offset).unwrap();

    let mut got = vec![0u8; 2 * 4096];
    disk.read_at(&mut got, 0).unwrap();
    let mut want = content[..2 * 4096].to_vec();
    want[4036..4136].fill(0xab);
    assert!(got == want);
    assert_eq!(disk.written_blocks(), 2);
}

#[test]
fn test_discard_changes_reads_the_base_again_for_both_overlays() {
    let mut rng = Rng(41);
    let (base, content) = base_image(&mut rng);
    let overlay = TempFile::new().unwrap();
    let mut disks = [memory_disk(&base), file_disk(&base, overlay.as_path())];
    for disk in &mut disks {
        disk.write_at(&[7; 5000], 1000).unwrap();

        disk.discard_changes().unwrap();

        let mut got = vec![0u8; content.len()];
        disk.read_at(&mut got, 0).unwrap();
        assert!(got == content);
        assert_eq!(disk.written_blocks(), 0);
    }
    // A reopened file overlay has forgotten the discarded write too.
    drop(disks);
    let again = file_disk(&base, overlay.as_path());
    assert_eq!(again.written_blocks(), 0);
}

#[test]
fn test_range_past_the_end_is_refused() {
    let mut rng = Rng(51);
    let (base, _) = base_image(&mut rng);
    let mut disk = memory_disk(&base);

    let write = disk.write_at(&[1; 512], SIZE - 511);
    let read = disk.read_at(&mut [0; 1], SIZE);
    let huge = disk.read_at(&mut [0; 16], u64::MAX - 8);

    assert!(matches!(write, Err(CowError::OutOfRange { .. })));
    assert!(matches!(read, Err(CowError::OutOfRange { .. })));
    assert!(matches!(huge, Err(CowError::OutOfRange { .. })));
    assert_eq!(disk.written_blocks(), 0);
}

#[test]
fn test_overlay_of_another_disk_size_is_refused() {
    let mut rng = Rng(61);
    let (base, _) = base_image(&mut rng);
    let overlay = TempFile::new().unwrap();
    drop(file_disk(&base, overlay.as_path()));
    let small = TempFile::new().unwrap();
    small.as_file().write_all(&[0; 4096]).unwrap();

    let err = CowDisk::with_file(
        open_base(small.as_path()).unwrap(),
        small.as_path().to_owned(),
        4096,
        overlay.as_path(),
    )
    .unwrap_err();

    assert!(matches!(err, CowError::OverlayFormat { .. }), "{err}");
}

#[test]
fn test_frozen_overlay_thaws_into_the_same_disk_for_both_kinds() {
    let mut rng = Rng(71);
    let (base, content) = base_image(&mut rng);
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let overlay = dir.as_path().join("live.cow");
    let sources = [memory_disk(&base), file_disk(&base, &overlay)];
    for (i, mut disk) in sources.into_iter().enumerate() {
        let mut model = content.clone();
        run_against_model(&mut disk, &mut model, &content, 71 + i as u64);
        let frozen = dir.as_path().join(format!("frozen{i}.cow"));
        let saved = disk.save(disk.freeze(&frozen).unwrap());
        drop(disk);

        let json = serde_json::to_string(&saved).unwrap();
        let saved: CowState = serde_json::from_str(&json).unwrap();
        let mut back = memory_disk(&base);
        back.thaw(saved.frozen_overlay.as_deref()).unwrap();

        let mut whole = vec![0u8; model.len()];
        back.read_at(&mut whole, 0).unwrap();
        assert!(whole == model, "overlay kind {i}");
        assert!(!dir
            .as_path()
            .join(format!("frozen{i}.cow.partial"))
            .exists());
    }
}

#[test]
fn test_thaw_drops_the_writes_made_after_the_freeze() {
    let mut rng = Rng(72);
    let (base, content) = base_image(&mut rng);
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let mut disk = file_disk(&base, &dir.as_path().join("live.cow"));
    disk.write_at(&[1; 100], 5000).unwrap();
    let frozen = disk.freeze(&dir.as_path().join("frozen.cow")).unwrap();
    disk.write_at(&[2; 9000], 20).unwrap();

    disk.thaw(frozen.as_deref()).unwrap();

    let mut model = content.clone();
    model[5000..5100].fill(1);
    let mut whole = vec![0u8; model.len()];
    disk.read_at(&mut whole, 0).unwrap();
    assert!(whole == model);
    // Only block 1 (bytes 4096..8192) was written before the freeze.
    assert_eq!(disk.written_blocks(), 1);
}

#[test]
fn test_freeze_without_changes_writes_no_file() {
    let mut rng = Rng(73);
    let (base, _) = base_image(&mut rng);
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let disk = memory_disk(&base);
    let path = dir.as_path().join("frozen.cow");

    let frozen = disk.freeze(&path).unwrap();

    assert_eq!(frozen, None);
    assert!(!path.exists());
}

#[test]
fn test_frozen_overlay_of_another_disk_is_refused_and_changes_stay() {
    let mut rng = Rng(74);
    let (base, _) = base_image(&mut rng);
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let mut disk = memory_disk(&base);
    disk.write_at(&[9; 10], 0).unwrap();
    let foreign = dir.as_path().join("foreign.cow");
    std::fs::write(&foreign, vec![0u8; 200_000]).unwrap();

    let err = disk.thaw(Some(&foreign)).unwrap_err();

    assert!(matches!(err, CowError::OverlayFormat { .. }), "{err}");
    assert_eq!(disk.written_blocks(), 1);
}

#[test]
fn test_overlay_file_that_is_the_base_is_refused_and_the_base_unchanged() {
    let mut rng = Rng(91);
    let (base, _) = base_image(&mut rng);
    let before = checksum(base.as_path());

    let err = CowDisk::with_file(
        open_base(base.as_path()).unwrap(),
        base.as_path().to_owned(),
        SIZE,
        base.as_path(),
    )
    .unwrap_err();

    assert!(matches!(err, CowError::OverlayIsBase(_)), "{err}");
    assert_eq!(checksum(base.as_path()), before);
}

#[test]
fn test_overlay_file_open_in_another_drive_is_refused() {
    let mut rng = Rng(101);
    let (base, _) = base_image(&mut rng);
    let overlay = TempFile::new().unwrap();
    let first = file_disk(&base, overlay.as_path());

    let second = CowDisk::with_file(
        open_base(base.as_path()).unwrap(),
        base.as_path().to_owned(),
        SIZE,
        overlay.as_path(),
    );

    assert!(
        matches!(second, Err(CowError::OverlayInUse(_))),
        "{second:?}"
    );
    drop(first);
    assert!(CowDisk::with_file(
        open_base(base.as_path()).unwrap(),
        base.as_path().to_owned(),
        SIZE,
        overlay.as_path(),
    )
    .is_ok());
}
