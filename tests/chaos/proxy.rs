//! A TCP proxy in front of a server, switchable at runtime between forwarding and the
//! network faults HTTP servers cannot produce themselves.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFault {
    /// Pass everything through.
    Forward,
    /// Accept, then reset the connection (RST) at once.
    Reset,
    /// Accept and never answer.
    Blackhole,
    /// Forward, but send the response one byte per this delay.
    Trickle(Duration),
}

#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<NetFault>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, rx) = watch::channel(NetFault::Forward);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let mut changes = rx.clone();
                let fault = *changes.borrow_and_update();
                // A mode change also cuts connections opened before it, or a client's
                // pooled keep-alive connection would slip past the fault.
                tokio::spawn(async move {
                    tokio::select! {
                        _ = handle(conn, upstream, fault) => {}
                        _ = changes.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, mode }
    }

    pub fn set(&self, fault: NetFault) {
        self.mode.send_replace(fault);
    }
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, fault: NetFault) {
    match fault {
        NetFault::Forward => {
            if let Ok(mut up) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
            }
        }
        NetFault::Reset => {
            // Linger 0 turns the close into a reset. (The deprecation warns that a
            // non-zero linger blocks the thread on drop; zero never waits.)
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
            drop(client);
        }
        NetFault::Blackhole => {
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(120), async {
                while let Ok(n) = client.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        NetFault::Trickle(delay) => {
            let Ok(up) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = up.into_split();
            let upload = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut uw).await;
            });
            let mut buf = [0u8; 4096];
            'outer: while let Ok(n) = ur.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                for b in &buf[..n] {
                    if cw.write_all(&[*b]).await.is_err() {
                        break 'outer;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
            upload.abort();
        }
    }
}
