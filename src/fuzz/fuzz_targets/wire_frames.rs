//! Arbitrary bytes from an adversarial peer through the frame decoder and
//! every message decoder (control and fs, both directions): must never
//! panic, never allocate unboundedly.
#![no_main]

use gondolin_wire::fs::{FsGuestMsg, FsHostMsg};
use gondolin_wire::{decode, FrameDecoder, GuestMsg, HostMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new();
    // Feed in two pieces to exercise partial frames.
    let (a, b) = data.split_at(data.len() / 2);
    for part in [a, b] {
        dec.push(part);
        while let Ok(Some(frame)) = dec.next_frame() {
            if let Ok(m) = decode::<GuestMsg>(frame) {
                let _ = m.validate();
            }
            if let Ok(m) = decode::<HostMsg>(frame) {
                let _ = m.validate();
            }
            if let Ok(FsGuestMsg::Request(r)) = decode::<FsGuestMsg>(frame) {
                let _ = r.op.validate();
            }
            let _ = decode::<FsHostMsg>(frame);
        }
    }
});
