//! virtio-blk against arbitrary descriptor tables, rings and request headers: it must
//! never panic, and never touch memory outside the guest's.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use spry::config::CacheType;
use spry::devices::virtio::block::{Block, BlockConfig};
use spry::devices::virtio::VirtioDevice;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((mem, queue)) = common::queue_from(data) else { return };
    let disk = vmm_sys_util::tempfile::TempFile::new().expect("temp file");
    disk.as_file().write_all(&[0u8; 64 * 512]).expect("disk");
    let file = disk.as_file().try_clone().expect("clone");
    let mut block = Block::new(
        BlockConfig {
            id: "fuzz".into(),
            path: disk.as_path().to_owned(),
            file,
            capacity: 64,
            read_only: data[0] & 2 == 2,
            cache: if data[0] & 4 == 4 { CacheType::Writeback } else { CacheType::Unsafe },
        },
        common::interrupt(),
    )
    .expect("block");
    if block.activate(mem, vec![queue], 0).is_ok() {
        block.process_queue();
        block.process_queue();
    }
});
