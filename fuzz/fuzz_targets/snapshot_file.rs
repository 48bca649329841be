//! The snapshot state file: the header checks (magic, version, lengths, CRC) on raw
//! bytes, and, with a header this target makes valid for the rest of the input, the
//! JSON payload decoded as the VM's and a vCPU's saved state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spry::snapshot::format::{decode, payload, FORMAT_VERSION, MAGIC};
use spry::vstate::vcpu_state::VcpuState;
use spry::vstate::vm_state::VmState;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut file = Vec::with_capacity(24 + rest.len());
        file.extend_from_slice(&MAGIC);
        file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
        file.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        file.extend_from_slice(rest);
        file
    };
    let _ = payload(&file).map_err(|e| e.to_string());
    if let Ok(vm) = decode::<VmState>(&file) {
        let _ = spry::snapshot::format::encode(&vm);
    }
    if let Ok(vcpu) = decode::<VcpuState>(&file) {
        let _ = vcpu.msr(0x10);
        let _ = spry::snapshot::format::encode(&vcpu);
    }
});
