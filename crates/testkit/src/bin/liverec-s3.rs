//! A local S3 protocol server (s3s-fs) for manual runs and benchmarks: serves bucket
//! `rec` under DIR on 127.0.0.1:PORT with the test credentials
//! (`liverec-test` / `liverec-test-secret-key`) until killed.
//!
//! `liverec-s3 DIR [PORT]` prints `s3 ready http://127.0.0.1:PORT` once listening.

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: liverec-s3 DIR [PORT]");
        std::process::exit(2);
    };
    let port: u16 = match args.next().map(|p| p.parse()) {
        None => 0,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("liverec-s3: bad port: {e}");
            std::process::exit(2);
        }
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let server = liverec_testkit::s3::S3Server::start_on(std::path::Path::new(&dir), addr);
    println!("s3 ready {}", server.endpoint());
    loop {
        std::thread::park();
    }
}
