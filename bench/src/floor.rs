//! The floor: a FastAGI server that does nothing but send a fixed list of
//! command lines and read one reply line for each - no parsing, no
//! database, no call flow. Run in its own process (`voice-otp-bench
//! --floor-server FILE`), on the same kind of runtime as the daemon, under
//! the same load generator, it measures what the machine's loopback TCP
//! alone allows: no FastAGI server doing the same exchange can beat it here.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves the commands in `script` (one per line, the last being
/// `HANGUP`) to every connection; prints `ready agi=ADDR` once listening.
pub async fn serve(script: &Path) {
    let text = std::fs::read_to_string(script).expect("floor script");
    let commands: Arc<Vec<Vec<u8>>> = Arc::new(text.lines().map(|l| format!("{l}\n").into_bytes()).collect());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind floor server");
    println!("ready agi={}", listener.local_addr().expect("floor address"));
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(session(stream, commands.clone()));
    }
}

async fn session(mut stream: TcpStream, commands: Arc<Vec<Vec<u8>>>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = [0u8; 4096];
    // The request block ends with an empty line.
    let mut filled = 0;
    while !buf[..filled].windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
    for command in commands.iter() {
        stream.write_all(command).await?;
        // One reply line per command (`HANGUP` may bring a second line and
        // then the end of the connection).
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 || buf[..n].contains(&b'\n') {
                break;
            }
        }
    }
    Ok(())
}
