//! sandboxfs: placeholder until the FUSE daemon lands.

fn main() {
    eprintln!("sandboxfs: not built yet");
    std::process::exit(1);
}
