//! Fetching a source: one HTTP request with the source's method, headers and timeout,
//! gzip decoded, and the body read up to `max_body` bytes. Anything but a complete 2xx
//! body within the cap is an error, so a bad response can never look like an empty list.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::USER_AGENT;

use crate::config::{redact_url, Source};
use crate::deliver::{describe_send_error, user_agent, Peer};

/// Why a fetch failed. URLs in messages have credentials and query removed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{method} {url}: {detail}")]
    Request {
        method: String,
        url: String,
        detail: String,
    },
    #[error("{method} {url}: HTTP {status} (expected 2xx){body}")]
    Status {
        method: String,
        url: String,
        status: u16,
        /// The start of the response body, which often says why.
        body: String,
    },
    #[error("{method} {url}: response body is over max_body = {limit} bytes; raise max_body for this source if the API really returns that much")]
    TooLarge {
        method: String,
        url: String,
        limit: u64,
    },
}

/// The HTTP clients sources are polled with: one shared by every source that trusts
/// only the built-in roots, and one for each source with a `ca_file`, since a client's
/// trusted roots are fixed when it is built.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    /// Per source name, for the sources that have a `ca_file`.
    with_ca: Arc<HashMap<String, reqwest::Client>>,
}

impl Fetcher {
    /// Builds the clients for `sources`, once, before any poll.
    pub fn new(sources: &BTreeMap<String, Arc<Source>>) -> Result<Fetcher, reqwest::Error> {
        let mut with_ca = HashMap::new();
        for source in sources.values().filter(|s| !s.ca.is_empty()) {
            let builder = source.ca.iter().fold(client_builder(), |b, cert| {
                b.add_root_certificate(cert.clone())
            });
            with_ca.insert(source.name.clone(), builder.build()?);
        }
        Ok(Fetcher {
            client: client_builder().build()?,
            with_ca: Arc::new(with_ca),
        })
    }

    /// The client for `source`: its own if it has a `ca_file`, else the shared one.
    fn client(&self, source: &Source) -> &reqwest::Client {
        self.with_ca.get(&source.name).unwrap_or(&self.client)
    }

    /// The body of one successful request, at most `source.max_body` bytes.
    pub async fn fetch(&self, source: &Source) -> Result<Vec<u8>, FetchError> {
        let method = source.method.to_string();
        let url = redact_url(&source.url);
        let request_err = |e: reqwest::Error| FetchError::Request {
            method: method.clone(),
            url: url.clone(),
            detail: describe_send_error(
                &e,
                source.timeout,
                Peer::Source {
                    ca_file: source.ca_file.as_deref(),
                },
            ),
        };
        let mut resp = self
            .client(source)
            .request(source.method.clone(), source.url.clone())
            .headers(source.headers.clone())
            .header(USER_AGENT, user_agent())
            .timeout(source.timeout)
            .send()
            .await
            .map_err(request_err)?;
        let too_large = || FetchError::TooLarge {
            method: method.clone(),
            url: url.clone(),
            limit: source.max_body,
        };
        let status = resp.status();
        if !status.is_success() {
            // A little of the body helps ("rate limit exceeded"); never more than that.
            let mut snippet = Vec::new();
            while snippet.len() < 200 {
                match resp.chunk().await {
                    Ok(Some(c)) => snippet.extend_from_slice(&c),
                    _ => break,
                }
            }
            snippet.truncate(200);
            let text: String = String::from_utf8_lossy(&snippet)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let text = text.trim();
            return Err(FetchError::Status {
                method,
                url,
                status: status.as_u16(),
                body: if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                },
            });
        }
        // With gzip, content-length is the compressed size; the streaming check below
        // counts decoded bytes, which is what memory pays for (a gzip bomb stops here).
        if resp
            .content_length()
            .is_some_and(|len| len > source.max_body)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(request_err)? {
            if (body.len() + chunk.len()) as u64 > source.max_body {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Every source client has the same settings; only the trusted roots differ.
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .gzip(true)
        .redirect(reqwest::redirect::Policy::limited(5))
}
