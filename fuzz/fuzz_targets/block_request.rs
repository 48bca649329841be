//! virtio-blk against arbitrary descriptor tables, rings and request headers (raw
//! mode), and against well-formed multi-descriptor and indirect chains whose
//! headers, lengths, directions and addresses are the fuzzer's (chain mode): it
//! must never panic, hang or touch memory outside the guest's.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spry::config::CacheType;
use spry::devices::virtio::block::{Block, BlockConfig};
use spry::devices::virtio::VirtioDevice;
use vmm_sys_util::tempfile::TempFile;

#[path = "common.rs"]
mod common;

/// 64 sectors, shared by every run (a request may write it; that is fine).
fn disk() -> &'static TempFile {
    static DISK: OnceLock<TempFile> = OnceLock::new();
    DISK.get_or_init(|| {
        let disk = TempFile::new().expect("temp file");
        disk.as_file().write_all(&[0u8; 64 * 512]).expect("disk");
        disk
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let built = if mode & 1 == 1 {
        common::chains_from(rest)
    } else {
        common::queue_from(rest)
    };
    let Some((mem, queue)) = built else { return };
    let disk = disk();
    let file = disk.as_file().try_clone().expect("clone");
    let mut block = Block::new(
        BlockConfig {
            id: "fuzz".into(),
            path: disk.as_path().to_owned(),
            file,
            capacity: 64,
            read_only: mode & 2 == 2,
            cache: if mode & 4 == 4 {
                CacheType::Writeback
            } else {
                CacheType::Unsafe
            },
        },
        common::interrupt(),
    )
    .expect("block");
    let features = if mode & 8 == 8 { u64::MAX } else { 1 << 32 };
    if block.activate(mem, vec![queue], features).is_ok() {
        block.process_queue();
        block.process_queue();
    }
});
