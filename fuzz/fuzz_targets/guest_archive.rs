//! What `spry cp :SRC DST` unpacks: a tar stream the guest makes, so any bytes at
//! all. It is unpacked into an empty directory; whatever the archive says (`..`,
//! absolute paths, symlinks out and writes through them, hard links, devices),
//! nothing may appear beside that directory, and spry must not panic.
#![no_main]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use spry::agent::copy::unpack_archive;

/// A fresh `spry-fuzz-archive/<pid>-<n>` with an empty `in` inside, on tmpfs where
/// there is one.
fn fresh_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let root = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = root
        .join("spry-fuzz-archive")
        .join(format!("{}-{n}", std::process::id()));
    std::fs::create_dir_all(dir.join("in")).expect("create the fuzz directory");
    dir
}

fuzz_target!(|data: &[u8]| {
    let dir = fresh_dir();
    let _ = unpack_archive(data, &dir.join("in"));
    let beside: Vec<_> = std::fs::read_dir(&dir)
        .expect("list the fuzz directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(beside, ["in"], "the archive wrote beside its directory");
    // Entries may have taken write permission away from their directories.
    let_owner_in(&dir);
    std::fs::remove_dir_all(&dir).expect("remove the fuzz directory");
});

/// Gives the owner every permission on `dir` and the directories below it (not
/// following symlinks), so the tree can be removed.
fn let_owner_in(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let_owner_in(&entry.path());
        }
    }
}
