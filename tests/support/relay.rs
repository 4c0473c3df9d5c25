//! A TCP relay to a daemon's FastAGI port, standing in for another address
//! of it - or for a daemon not started yet: its address is known before the
//! target is, so two daemons' configs can each name the other's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// A listener on a loopback port of its own that pipes every connection to
/// its target, once set; before that, connections are accepted and closed.
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    target: Arc<OnceLock<SocketAddr>>,
}

impl Relay {
    /// Listening at once; piping from [`Relay::point_at`] on.
    pub fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let target: Arc<OnceLock<SocketAddr>> = Arc::new(OnceLock::new());
        let (count, to) = (accepted.clone(), target.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let Some(&to) = to.get() else { continue };
                let Ok(server) = TcpStream::connect(to) else { continue };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Relay { addr, accepted, target }
    }

    /// Sets where connections go (once).
    pub fn point_at(&self, target: SocketAddr) {
        self.target.set(target).expect("a relay is pointed once");
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Its address as a FastAGI URL.
    pub fn agi_url(&self) -> String {
        format!("agi://{}/otp", self.addr)
    }
}

/// Copies `from` to `to` on a thread of its own until either side ends.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
