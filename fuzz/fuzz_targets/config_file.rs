//! The config file: JSON into `VmConfig`, then the whole validation into
//! `VmResources` (machine shape, kernel and initrd inspection, command line, drives,
//! network interfaces, device count). Every path in the config is first pointed at
//! one of a few prepared files (a kernel, a whole-sector disk, a short file, a
//! directory, nothing), so the fuzzer explores validation, not the host's files.
#![no_main]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spry::config::{parse, VmConfig};
use spry::resources::VmResources;
use vmm_sys_util::tempdir::TempDir;

struct Files {
    _dir: TempDir,
    choices: Vec<PathBuf>,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = TempDir::new().expect("temp dir");
        let root = dir.as_path().to_owned();
        let write = |name: &str, bytes: &[u8]| {
            let path = root.join(name);
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(bytes))
                .expect("file");
            path
        };
        // The smallest x86_64 ELF header spry takes for a kernel.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 62;
        elf[54] = 56;
        let choices = vec![
            write("vmlinux", &elf),
            write("disk", &[0u8; 4096]),
            write("short", &[1u8; 100]),
            root.clone(),
            root.join("missing"),
        ];
        Files { _dir: dir, choices }
    })
}

/// One of the prepared files, picked by the path the fuzzer wrote.
fn sandboxed(path: &Path) -> PathBuf {
    let choices = &files().choices;
    let pick = path.as_os_str().len() % choices.len();
    choices[pick].clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut config) = parse::<VmConfig>(data) else {
        return;
    };
    let _ = config.unsupported_sections();
    let _ = serde_json::to_vec(&config);
    config.boot_source.kernel_image_path = sandboxed(&config.boot_source.kernel_image_path);
    if let Some(p) = config.boot_source.initrd_path.as_mut() {
        *p = sandboxed(p);
    }
    for d in &mut config.drives {
        if let Some(p) = d.path_on_host.as_mut() {
            *p = sandboxed(p);
        }
    }
    if let Ok(resources) = VmResources::try_from(config) {
        let _ = resources.boot.cmdline.as_cstring();
    }
});
