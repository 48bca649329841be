//! What `spry exec` reads from the guest agent, a program the guest controls: a
//! stream of frames (kind, u32 LE length, payload), the agent's HELLO and the
//! EXIT payload. Nothing in it may panic spry or make it allocate past the frame
//! limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spry::agent::protocol::{check_hello, read_frame, Ended, Kind};

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    let mut first = true;
    while let Ok(Some(frame)) = read_frame(&mut stream) {
        if first {
            let _ = check_hello(&frame).map_err(|e| e.to_string());
            first = false;
        }
        if frame.kind == Kind::Exit as u8 {
            if let Ok(ended) = Ended::decode(&frame.payload) {
                let _ = ended.exit_code();
            }
        }
    }
});
