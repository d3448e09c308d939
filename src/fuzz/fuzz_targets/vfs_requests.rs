//! The host's fs port end to end: arbitrary bytes from sandboxfs, after a
//! valid `Hello`, through `vfs::serve::serve` (framing, message decode,
//! request validation, dispatch) onto a Memory provider. Must never panic,
//! hang or buffer without bound; every request gets an answer.
#![no_main]

use std::sync::Arc;

use gondolin::vfs::memory::MemoryProvider;
use gondolin::vfs::serve::serve;
use gondolin::vfs::server::FsServer;
use gondolin_wire::encode;
use gondolin_wire::fs::{FsGuestMsg, FS_PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = FsServer::new(Arc::new(MemoryProvider::new()));
        let (mut guest, host) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve(server, host));
        let mut input = encode(&FsGuestMsg::Hello {
            version: FS_PROTOCOL_VERSION,
        });
        input.extend_from_slice(data);
        let (mut rd, mut wr) = tokio::io::split(&mut guest);
        // Drain the host's answers while writing, as sandboxfs does.
        let drain = async {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let write = async {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let (_, _, result) = tokio::join!(drain, write, served);
        result.expect("serve panicked").ok();
    });
});
