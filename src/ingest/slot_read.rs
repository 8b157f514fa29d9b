//! Reads of a publishing plain-TCP connection on the read grid (`[ingest] read_interval`),
//! without a wake-up per frame (issue 17).
//!
//! The grid alone made the *task* poll once per slot, but the runtime's thread still woke
//! in `epoll_wait` for every frame the encoder sent (tokio registers sockets
//! edge-triggered, and each arriving segment is an edge): at 100 hd streams ~3 700
//! wake-ups a second that only set a readiness bit nobody was waiting for, the largest
//! cost left after the grid (benches/README.md). So while a connection publishes:
//!
//! * `SO_RCVLOWAT` is raised ([`quiet`]): Linux TCP then signals readability only once
//!   that much is queued (or the window is nearly full, or the peer closed), so frames
//!   arriving between slots wake nothing;
//! * each slot reads the socket directly ([`read_now`], a non-blocking `recv`), past the
//!   runtime's readiness cache — which may say "not readable" while data sits below the
//!   low-water mark, so a read through tokio would wait for an edge that does not come.
//!
//! When the connection stops publishing, [`restore`] sets the mark back to 1 byte before
//! any read goes through the runtime again; setting it makes the kernel signal at once if
//! data is already queued, so commands after an unpublish are not stranded.
//!
//! Written by hand because no crate we use sets `SO_RCVLOWAT` (socket2 0.6 has no setter)
//! and tokio offers no read that ignores its readiness cache.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Queued bytes at which a publishing socket signals readability anyway: more than a
/// real-time stream queues between two slots (100 ms of 5 Mb/s is 62 KB), so such a
/// stream wakes nothing; a faster one wakes the runtime once per 64 KiB, still far from
/// once per frame. Not higher: Linux raises the socket's receive buffer to about twice
/// the mark when that is more than it has (`tcp_set_rcvlowat`), and a larger buffer keeps
/// taking a peer's bytes long after we stopped reading it (issue 14's flood of pings from
/// a peer that never reads our answers then did not stall within `idle_timeout`).
const LOW_WATER_MARK: libc::c_int = 64 * 1024;

/// Raises the socket's receive low-water mark (see the module docs).
pub fn quiet(tcp: &TcpStream) -> io::Result<()> {
    set_rcvlowat(tcp, LOW_WATER_MARK)
}

/// Sets the receive low-water mark back to the default of 1 byte.
pub fn restore(tcp: &TcpStream) -> io::Result<()> {
    set_rcvlowat(tcp, 1)
}

fn set_rcvlowat(tcp: &TcpStream, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the descriptor is open for as long as `tcp` is borrowed, and the option
    // value is a live c_int whose size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One non-blocking read of what is queued, appended to `buf` (which must have room):
/// `Ok(0)` is the peer's end of stream, `WouldBlock` means nothing arrived.
pub fn read_now(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
    if spare.is_empty() {
        return Err(io::Error::other("read buffer has no room"));
    }
    // A non-blocking recv returns what is queued even below the low-water mark (Linux
    // tcp_recvmsg with no timeout), which is what a slot's read wants.
    let n = socket2::SockRef::from(tcp).recv(spare)?;
    // SAFETY: recv initialized the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (accepted.expect("accept").0, client.expect("connect"))
    }

    /// What the slot reads rely on from the kernel: with the mark raised, a non-blocking
    /// read still returns the little that is queued (an audio-only stream sends a few
    /// hundred bytes per slot), an empty socket answers WouldBlock, and the peer's close
    /// reads as 0 — never a wait for the mark.
    #[tokio::test]
    async fn reads_below_the_raised_mark_return_what_is_queued() {
        let (server, mut client) = pair().await;
        quiet(&server).expect("SO_RCVLOWAT");
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let e = read_now(&server, &mut buf).expect_err("nothing sent yet");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        client.write_all(&[7u8; 700]).await.expect("write");
        let mut got = 0;
        for _ in 0..200 {
            match read_now(&server, &mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
            if got >= 700 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(got, 700, "bytes below the mark were not returned");
        assert_eq!(&buf[..], &[7u8; 700][..]);

        restore(&server).expect("SO_RCVLOWAT back to 1");
        drop(client);
        let mut closed = false;
        for _ in 0..200 {
            match read_now(&server, &mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => panic!("{n} bytes after the close"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(closed, "the peer's close was not read as end of stream");
    }

    #[tokio::test]
    async fn a_full_buffer_is_an_error_not_a_zero_read() {
        let (server, _client) = pair().await;
        let mut buf = BytesMut::new();
        assert!(read_now(&server, &mut buf).is_err());
    }
}
