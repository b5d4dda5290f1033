//! The harness shared by the integration tests.

use std::path::PathBuf;
use std::time::Duration;

use pollhook::config::Config;
use pollhook::demo::api::SampleApi;
use pollhook::demo::receiver::{Received, Receiver};
use pollhook::sign::Scheme;
use pollhook::store::throwaway::Server;
use pollhook::store::{PgStore, SharedStore, SledStore, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Long enough for a loaded CI machine, short enough that a broken test fails fast.
pub const WAIT: Duration = Duration::from_secs(15);

/// Whether this test binary runs the tests on PostgreSQL: `it` runs them on sled, and
/// `it_pg` (the same files, see `tests/it_pg.rs`) on a throwaway PostgreSQL server, a
/// database per harness.
pub fn on_postgres() -> bool {
    env!("CARGO_CRATE_NAME") == "it_pg"
}

/// A new [`Harness`], or, on PostgreSQL where no server can be started, a return from
/// the test after saying loudly that it is skipped (a failure under
/// `POLLHOOK_REQUIRE_POSTGRES=1`, as in CI).
macro_rules! harness {
    () => {
        match $crate::support::Harness::new().await {
            Some(h) => h,
            None => return,
        }
    };
}

pub struct Harness {
    pub api: SampleApi,
    pub rx: Receiver,
    pub dir: tempfile::TempDir,
    /// On PostgreSQL: the server and the URL of this harness's database.
    pub pg: Option<(Server, String)>,
    servers: CancellationToken,
    daemon: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Harness {
    pub async fn new() -> Option<Harness> {
        let pg = if on_postgres() {
            let test = std::thread::current()
                .name()
                .unwrap_or("a test")
                .to_string();
            let server = Server::for_test(&test)?;
            let url = server.new_database("it");
            Some((server, url))
        } else {
            None
        };
        let servers = CancellationToken::new();
        Some(Harness {
            pg,
            api: SampleApi::start(servers.clone()).await.unwrap(),
            rx: Receiver::start(Scheme::Standard, vec![SECRET.into()], servers.clone())
                .await
                .unwrap(),
            dir: tempfile::tempdir().unwrap(),
            servers,
            daemon: None,
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A config with one source `s` polling the sample API every 200 ms and one target
    /// `t` posting to the receiver with short retries. `source_extra` and `extra` are
    /// appended to the source table and to the file.
    pub fn config_text(&self, source_extra: &str, extra: &str) -> String {
        self.config_text_for(&self.rx.url(), "", &self.api.url(), source_extra, extra)
    }

    /// [`Harness::config_text`] with target `t` posting to `target_url` and source `s`
    /// polling `source_url` (a server the test put in front of the receiver or the API);
    /// `target_extra` is appended to the target's table.
    pub fn config_text_for(
        &self,
        target_url: &str,
        target_extra: &str,
        source_url: &str,
        source_extra: &str,
        extra: &str,
    ) -> String {
        let store = match &self.pg {
            Some((_, url)) => format!("[store]\npostgres = {url:?}\n"),
            None => String::new(),
        };
        format!(
            r#"state_dir = {state:?}
shutdown_grace = "3s"

{store}

[admin]
listen = ""

[targets.t]
url = "{target_url}"
secret = "{SECRET}"
retry = ["200ms", "200ms", "200ms", "200ms", "200ms", "200ms", "200ms", "200ms", "200ms", "200ms"]
timeout = "2s"
{target_extra}

[sources.s]
url = "{source_url}"
interval = "200ms"
items = "/items"
{source_extra}
{extra}"#,
            state = self.state_dir().display().to_string(),
        )
    }

    pub fn config(&self, source_extra: &str, extra: &str) -> Config {
        self.parse_config(&self.config_text(source_extra, extra))
    }

    /// `text` read as the harness's config file (`config.toml`, not written), with an
    /// empty environment.
    pub fn parse_config(&self, text: &str) -> Config {
        Config::parse(text, &self.dir.path().join("config.toml"), &|_| None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the daemon in-process.
    pub fn start(&mut self, config: Config) {
        self.start_with(config, pollhook::daemon::Options::default());
    }

    /// Starts the daemon in-process with `options` (reloads, notifications).
    pub fn start_with(&mut self, config: Config, options: pollhook::daemon::Options) {
        assert!(self.daemon.is_none(), "daemon already running");
        let token = CancellationToken::new();
        let t = token.clone();
        let handle = tokio::spawn(async move {
            pollhook::daemon::run_with(config, None, t, options)
                .await
                .unwrap();
        });
        self.daemon = Some((token, handle));
    }

    /// Writes `text` as the harness's config file (`config.toml`, which a reload reads)
    /// and loads it.
    pub fn write_config(&self, text: &str) -> Config {
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Stops the daemon as SIGTERM would and waits for it.
    pub async fn stop(&mut self) {
        if let Some((token, handle)) = self.daemon.take() {
            token.cancel();
            tokio::time::timeout(WAIT, handle)
                .await
                .expect("daemon did not stop")
                .unwrap();
        }
    }

    /// Waits until the API has served `n` more requests than now: that many polls ran.
    pub async fn polls(&self, n: u64) {
        let target = self.api.requests() + n;
        wait_for(|| self.api.requests() >= target).await;
    }

    /// Opens the daemon's store for inspection: sled's only once the daemon stopped;
    /// PostgreSQL's at any time.
    pub fn store(&self) -> SharedStore {
        match &self.pg {
            Some((_, url)) => std::sync::Arc::new(
                PgStore::open(url, "the test database").unwrap_or_else(|e| panic!("{e:?}")),
            ),
            None => std::sync::Arc::new(
                SledStore::open(&self.state_dir()).unwrap_or_else(|e| panic!("{e}")),
            ),
        }
    }

    /// Waits until `pred` holds for the receiver's log; fails the test otherwise.
    pub async fn received(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        if !self.rx.wait_until(WAIT, pred).await {
            panic!(
                "timed out waiting for {what}; received: {:#?}",
                summary(&self.rx.received())
            );
        }
        self.rx.received()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.servers.cancel();
        if let Some((token, _)) = &self.daemon {
            token.cancel();
        }
    }
}

/// (status, type, item id, event id) of each request, for failure messages.
pub fn summary(r: &[Received]) -> Vec<(u16, String, String, String)> {
    r.iter()
        .map(|r| {
            (
                r.status,
                r.event_type.clone(),
                r.item_id.clone(),
                r.id.clone(),
            )
        })
        .collect()
}

/// Accepted (2xx) events of one type.
pub fn accepted<'a>(r: &'a [Received], event_type: &'a str) -> impl Iterator<Item = &'a Received> {
    r.iter()
        .filter(move |r| (200..300).contains(&r.status) && r.event_type == event_type)
}

/// Polls `cond` every 20 ms until it holds; fails the test after [`WAIT`].
pub async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port free on 127.0.0.1 a moment ago, for an admin API the test must know the
/// address of. (Another process could take it in between; on a test machine none does.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `config` with the admin API on `port` instead of off.
pub fn with_admin(config_text: &str, port: u16) -> String {
    let with = config_text.replacen(
        "[admin]\nlisten = \"\"",
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\""),
        1,
    );
    assert_ne!(
        with, config_text,
        "the config has no [admin] table to change"
    );
    with
}

/// Pending deliveries left in a store, for all targets.
pub fn pending(store: &dyn Store, target: &str) -> usize {
    store.pending(target, None, usize::MAX).unwrap().len()
}
