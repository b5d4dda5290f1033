//! A throwaway PostgreSQL server for tests, benchmarks and the chaos harness: `initdb`
//! in a temporary directory, `postgres` on a free loopback port, as a user other than
//! root (PostgreSQL refuses to run as root), stopped and deleted when the last handle
//! drops or the process that started it exits, even by `kill -9`.
//!
//! Nothing here is used by the daemon. It lives in the library so that the unit tests,
//! the integration tests, the chaos harness and the load test share one.
//!
//! [`Server::start_tls`] starts one with TLS on, serving a given certificate, for the
//! tests of the store's sslmodes.
//!
//! The server binaries are looked for in `$POLLHOOK_PG_BIN`, then in Debian's
//! `/usr/lib/postgresql/<version>/bin` (the highest version), then on `PATH`. Where
//! none is found, [`Server::start`] says so, and tests that need a server skip with a
//! loud message, unless `POLLHOOK_REQUIRE_POSTGRES=1` (set by `.ci/run`) makes that a
//! failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running server. Cheap to share: the server stops when the last clone drops.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// The shell that runs `postgres` and stops it when its stdin closes.
    keeper: Mutex<Option<Child>>,
    /// The user the server runs as (`None`: the current one).
    user: Option<(u32, u32)>,
}

/// What a server started by [`Server::start_tls`] serves.
pub struct TlsFiles {
    /// The server's certificate, PEM (its chain after it, if any).
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// Whether connections without TLS are refused: pg_hba.conf has `hostssl` lines
    /// only (as the throwaway's own tools, psql and pg_isready, default to
    /// sslmode=prefer, they still connect).
    pub only: bool,
}

/// Where no server could be started, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl Server {
    /// Starts a new server (about 2 s: `initdb`, then start-up).
    pub fn start() -> Result<Server, Unavailable> {
        Server::start_with(None)
    }

    /// Starts a new server with TLS on (`ssl=on`), serving `tls`'s certificate.
    pub fn start_tls(tls: &TlsFiles) -> Result<Server, Unavailable> {
        Server::start_with(Some(tls))
    }

    fn start_with(tls: Option<&TlsFiles>) -> Result<Server, Unavailable> {
        let bin = find_bin().ok_or_else(|| {
            Unavailable("PostgreSQL's initdb and postgres were not found in $POLLHOOK_PG_BIN, /usr/lib/postgresql/*/bin or PATH; install the Debian package `postgresql` (apt-get install postgresql)".into())
        })?;
        let user = server_user()?;
        let mut last = String::new();
        for _ in 0..3 {
            let dir = make_dir(user)?;
            let data = dir.join("data");
            let initdb = bin.join("initdb");
            let out = command(&initdb, user)
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .arg("--locale=C")
                .output()
                .map_err(|e| Unavailable(format!("cannot run {}: {e}", initdb.display())))?;
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Unavailable(format!(
                    "initdb failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            if let Some(tls) = tls {
                if let Err(e) = write_tls(&dir, &data, tls, user) {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
            let port = free_port()?;
            let keeper = keep(&bin, &dir, &data, port, user, tls.is_some())?;
            let server = Server {
                inner: Arc::new(Inner {
                    port,
                    dir: dir.clone(),
                    bin: bin.clone(),
                    keeper: Mutex::new(Some(keeper)),
                    user,
                }),
            };
            if server.wait_ready(Duration::from_secs(30)) {
                return Ok(server);
            }
            last = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            // Most likely the port was taken meanwhile: try another (the keeper
            // deletes this directory as it stops).
            drop(server);
        }
        Err(Unavailable(format!(
            "postgres did not start: {}",
            last.trim()
        )))
    }

    /// One server for the whole test process, started at the first call.
    pub fn shared() -> Result<Server, Unavailable> {
        static SHARED: OnceLock<Result<Server, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Server::start().map_err(|e| e.0))
            .clone()
            .map_err(Unavailable)
    }

    /// The shared server, or `None` after saying loudly on stderr that `test` is
    /// skipped; a failure instead when `POLLHOOK_REQUIRE_POSTGRES=1`.
    pub fn for_test(test: &str) -> Option<Server> {
        match Server::shared() {
            Ok(s) => Some(s),
            Err(e) if std::env::var("POLLHOOK_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("{test} needs PostgreSQL, and POLLHOOK_REQUIRE_POSTGRES=1: {e}")
            }
            Err(e) => {
                // Past the test harness's capture of `eprintln!`, so that a skip shows
                // in a passing run too.
                use std::io::Write;
                let line = format!("SKIPPED {test}: it needs PostgreSQL: {e}\n");
                let _ = std::io::stderr().write_all(line.as_bytes());
                None
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// A URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.inner.port)
    }

    /// Creates a new empty database with a name no other call of this process uses,
    /// and returns its URL.
    pub fn new_database(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(&name)
    }

    /// Runs `sql` in database `db` with psql, panicking on failure (for test set-up).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let psql = self.inner.bin.join("psql");
        let psql = if psql.exists() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(&psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.inner.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", psql.display()));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`: no
    /// checkpoint, crash recovery at the next start), and has it start again on the same
    /// port and data: a database restart in the middle of a test. Returns once it
    /// accepts connections again.
    pub fn restart(&self) {
        let status = command(&self.inner.bin.join("pg_ctl"), self.inner.user)
            .arg("-D")
            .arg(self.inner.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "pg_ctl stop failed");
        // The keeper starts it again.
        assert!(
            self.wait_ready(Duration::from_secs(30)),
            "postgres did not come back; its log is {}",
            self.inner.dir.join("log").display()
        );
    }

    fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let ready = self.inner.bin.join("pg_isready");
        while Instant::now() < deadline {
            let ok = Command::new(&ready)
                .args(["-q", "-h", "127.0.0.1", "-p", &self.inner.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            if let Some(k) = self
                .inner
                .keeper
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                if let Ok(Some(_)) = k.try_wait() {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(mut k) = self
            .keeper
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            drop(k.stdin.take());
            let _ = k.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Puts `tls`'s certificate and key in `dir` as `server.crt` and `server.key`, for the
/// user the server runs as: PostgreSQL refuses a key that others may read, or that is
/// not its own (root's, mode 0640, is the other case it takes). With `only`, replaces
/// `data`'s pg_hba.conf by one that takes TLS connections only.
fn write_tls(
    dir: &Path,
    data: &Path,
    tls: &TlsFiles,
    user: Option<(u32, u32)>,
) -> Result<(), Unavailable> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |path: &Path, e: std::io::Error| {
        Unavailable(format!("cannot write {}: {e}", path.display()))
    };
    for (name, text, mode) in [
        ("server.crt", &tls.cert_pem, 0o644),
        ("server.key", &tls.key_pem, 0o600),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| fail(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(&path, e))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| fail(&path, e))?;
        }
    }
    if tls.only {
        // initdb's file belongs to the server user already; writing keeps its owner.
        let path = data.join("pg_hba.conf");
        let hba = "local all all trust\n\
                   hostssl all all 127.0.0.1/32 trust\n\
                   hostssl all all ::1/128 trust\n";
        std::fs::write(&path, hba).map_err(|e| fail(&path, e))?;
    }
    Ok(())
}

/// Starts the keeper: a shell that runs `postgres` (again after a [`Server::restart`])
/// and, when its stdin closes (the process that started it ended, however), stops it
/// with a fast shutdown (SIGINT, then SIGKILL if it lingers) and deletes the directory.
/// With `tls`, the server has TLS on with the files of [`write_tls`].
fn keep(
    bin: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    user: Option<(u32, u32)>,
    tls: bool,
) -> Result<Child, Unavailable> {
    // The stdin watch (`cat`) must be the foreground job: a background job's stdin
    // is /dev/null.
    let script = r#"
(
  while [ ! -e "$DIR/stopping" ]; do
    "$PG" -D "$DATA" -p "$PORT" -k "$DIR" -c listen_addresses=127.0.0.1 \
      ${TLS:+-c ssl=on -c "ssl_cert_file=$DIR/server.crt" -c "ssl_key_file=$DIR/server.key"} \
      -c fsync=off -c full_page_writes=off -c max_connections=200 \
      -c shared_buffers=32MB </dev/null >>"$DIR/log" 2>&1 &
    echo $! >"$DIR/pid"
    wait $!
    sleep 0.2
  done
) &
loop=$!
cat >/dev/null
touch "$DIR/stopping"
pid=$(cat "$DIR/pid")
kill -INT "$pid" 2>/dev/null
for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
kill -KILL "$pid" 2>/dev/null
wait "$loop"
rm -rf "$DIR"
"#;
    command(Path::new("/bin/sh"), user)
        .args(["-c", script])
        .env("PG", bin.join("postgres"))
        .env("DATA", data)
        .env("DIR", dir)
        .env("PORT", port.to_string())
        .env("TLS", if tls { "on" } else { "" })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Unavailable(format!("cannot start postgres: {e}")))
}

fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        c.uid(uid).gid(gid);
    }
    c.env_remove("PGDATA").env("LC_ALL", "C");
    c
}

/// Root runs the server as `nobody`; anyone else as themselves.
fn server_user() -> Result<Option<(u32, u32)>, Unavailable> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or_else(|| {
            Unavailable("running as root, and there is no user `nobody` to run PostgreSQL as (it refuses root)".into())
        })
}

fn make_dir(user: Option<(u32, u32)>) -> Result<PathBuf, Unavailable> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pollhook-pg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| Unavailable(format!("cannot hand {} to uid {uid}: {e}", dir.display())))?;
    }
    Ok(dir)
}

fn free_port() -> Result<u16, Unavailable> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Unavailable(format!("cannot find a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Unavailable(format!("cannot find a free port: {e}")))
}

fn find_bin() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("POLLHOOK_PG_BIN").map(PathBuf::from) {
        return has(&d).then_some(d);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has(d))
        .collect();
    debian.sort();
    if let Some((_, d)) = debian.pop() {
        return Some(d);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .find(|d| has(d))
            // `initdb` on PATH may be a link into the real bin directory.
            .map(|d| {
                std::fs::canonicalize(d.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or(d)
            })
    })
}
