//! A guest's TLS ClientHello through the same steps as the MITM accept
//! (`Egress::serve_tls`): rustls' `Acceptor`, the SNI, a leaf minted by our
//! CA for that name, then the handshake continued with that config. Must
//! never panic; a name the CA refuses is an error, not a crash.
#![no_main]

use std::sync::{Arc, OnceLock};

use gondolin::tls::MitmCa;
use libfuzzer_sys::fuzz_target;
use rustls::server::Acceptor;

fn ca() -> &'static Arc<MitmCa> {
    static CA: OnceLock<Arc<MitmCa>> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join("gondolin-fuzz-ca");
        Arc::new(MitmCa::load_or_create(&dir).expect("fuzz CA"))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut acceptor = Acceptor::default();
    let mut rd = data;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let accepted = match acceptor.accept() {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(_) => return,
        };
        let name = accepted
            .client_hello()
            .server_name()
            .unwrap_or("192.0.2.1")
            .to_string();
        let Ok(config) = ca().server_config(&name) else {
            return;
        };
        if let Ok(mut conn) = accepted.into_connection(config) {
            while !rd.is_empty() {
                match conn.read_tls(&mut rd) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if conn.process_new_packets().is_err() {
                    return;
                }
            }
        }
        return;
    }
});
