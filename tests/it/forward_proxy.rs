//! A forward proxy on 127.0.0.1 for the tests of `proxy`: plain HTTP forwarding of
//! absolute-form requests (`GET http://host:port/path HTTP/1.1`) and `CONNECT`
//! tunnelling for HTTPS, as squid does for both. It records every request that reaches
//! it with its `Proxy-Authorization`, so a test can tell that a request really went
//! through it and with which credentials. It can ask for credentials (407 to any
//! request without them), and refuse the first few requests with a 407 whose body
//! echoes the `Proxy-Authorization` it got, as a careless proxy might, so the test can
//! check that the daemon's errors do not carry it on.
//!
//! It forwards only to loopback, and one request per forwarded connection
//! (`Connection: close` upstream): every request a client sends passes through here to
//! be recorded, none rides on a connection opened for another.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One request that reached the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    /// `GET`, `POST`, `CONNECT`, …
    pub method: String,
    /// The request target: an absolute URL, or `host:port` for `CONNECT`.
    pub target: String,
    /// The `Proxy-Authorization` header as received.
    pub authorization: Option<String>,
    /// Whether it was let through (else answered 407).
    pub admitted: bool,
}

#[derive(Default)]
struct State {
    passed: Mutex<Vec<Passed>>,
    /// `Basic <base64>` a request must carry, if any.
    required: Mutex<Option<String>>,
    /// Requests still to refuse with an echoing 407, whatever they carry.
    refuse: AtomicUsize,
}

#[derive(Clone)]
pub struct ForwardProxy {
    port: u16,
    state: Arc<State>,
}

impl ForwardProxy {
    /// Listens on 127.0.0.1 until `shutdown`.
    pub async fn start(shutdown: CancellationToken) -> ForwardProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let s = s.clone();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = serve(tcp, s) => {}
                    }
                });
            }
        });
        ForwardProxy { port, state }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// [`ForwardProxy::url`] with `user:password@` in it.
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Admits only requests with these credentials in `Proxy-Authorization: Basic`.
    pub fn require(&self, user: &str, password: &str) {
        *self.state.required.lock().unwrap() = Some(basic(user, password));
    }

    /// Refuses the next `n` requests with a 407 whose body quotes their
    /// `Proxy-Authorization`.
    pub fn refuse_next(&self, n: usize) {
        self.state.refuse.store(n, Ordering::SeqCst);
    }

    /// Every request so far, in order.
    pub fn passed(&self) -> Vec<Passed> {
        self.state.passed.lock().unwrap().clone()
    }

    /// The requests let through.
    pub fn admitted(&self) -> Vec<Passed> {
        self.passed().into_iter().filter(|p| p.admitted).collect()
    }
}

/// `Basic <base64(user:password)>`, as a client sends it.
pub fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// One client connection: one request, forwarded or tunnelled, or refused.
async fn serve(mut client: TcpStream, state: Arc<State>) {
    let Some((head, rest)) = read_head(&mut client).await else {
        return;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let authorization = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.clone());

    let refused = state
        .refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let required = state.required.lock().unwrap().clone();
    let admitted = !refused && required.is_none_or(|r| authorization.as_ref() == Some(&r));
    state.passed.lock().unwrap().push(Passed {
        method: method.clone(),
        target: target.clone(),
        authorization: authorization.clone(),
        admitted,
    });
    if !admitted {
        let body = format!(
            "proxy authentication failed; Proxy-Authorization was: {}",
            authorization.as_deref().unwrap_or("(none)")
        );
        let response = format!(
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(response.as_bytes()).await;
        return;
    }

    if method == "CONNECT" {
        let Some(mut upstream) = connect_loopback(&target).await else {
            let _ = client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                .await;
            return;
        };
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        if upstream.write_all(&rest).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        return;
    }

    // Absolute form: forwarded in origin form, without the proxy's own headers.
    let Some((authority, path)) = target.strip_prefix("http://").map(|t| {
        t.split_once('/')
            .map_or((t, "/".to_string()), |(a, p)| (a, format!("/{p}")))
    }) else {
        let _ = client
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    let Some(mut upstream) = connect_loopback(authority).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    let version = parts.next().unwrap_or("HTTP/1.1");
    let mut forwarded = format!("{method} {path} {version}\r\n");
    for (k, v) in &headers {
        let k_lower = k.to_ascii_lowercase();
        if !matches!(
            k_lower.as_str(),
            "proxy-authorization" | "proxy-connection" | "connection" | "keep-alive"
        ) {
            forwarded.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    if upstream.write_all(forwarded.as_bytes()).await.is_err()
        || upstream.write_all(&rest).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Reads up to the end of a request head; returns it and what came after it.
async fn read_head(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A connection to `authority` if it is on loopback: this proxy goes nowhere else.
async fn connect_loopback(authority: &str) -> Option<TcpStream> {
    let (host, port) = authority.rsplit_once(':')?;
    if !matches!(host, "127.0.0.1" | "localhost") {
        return None;
    }
    TcpStream::connect(("127.0.0.1", port.parse::<u16>().ok()?))
        .await
        .ok()
}
