//! Tests of opening a state_dir that is not as pollhook left it, on real sled databases
//! in temporary directories: a held lock, denied access, damaged files, a database that
//! went missing or was replaced (the marker file), and a page file missing under
//! `db/blobs`. Each failure must be told apart and say where and what to do.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::state_dir::{io_error, open_error, ID_KEY, META_TREE};
use super::tests::{incompressible, seen, NOW_MS};
use super::*;

/// The first commit of `source` with `items` (id, object) pairs.
fn baseline(store: &SledStore, source: &str, items: Vec<(String, serde_json::Value)>) {
    let commit = PollCommit {
        source: source.into(),
        expected_generation: store.source_state(source).unwrap().generation,
        item_count: items.len() as u64,
        upserts: items.into_iter().map(|(id, v)| (id, seen(&v))).collect(),
        now_ms: NOW_MS,
        ..PollCommit::default()
    };
    store.commit_poll(commit).expect("commit");
}

fn small(source: &str) -> Vec<(String, serde_json::Value)> {
    (0..3)
        .map(|i| (format!("{source}-{i}"), json!({"id": i})))
        .collect()
}

fn open_err(dir: &Path) -> StoreError {
    match SledStore::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e,
    }
}

/// The error with its causes, as `main` prints it (`{:#}`).
fn chain(e: &StoreError) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// Everything logged at INFO and above while `f` runs on this thread.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // With at most one dispatcher registered, tracing-core computes the interest of a
    // callsite reached for the first time from the registering thread's own default
    // (its "just one" shortcut). A test on another thread, with no subscriber, that
    // reaches a callsite first while ours is registered caches "never" for it, and
    // this thread's events from it are then skipped: seen in CI and once in 25 local
    // runs. A second dispatcher, alive for the whole run, turns the shortcut off, so
    // every registration asks every live dispatcher (ours says yes: "sometimes").
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

/// `logged` sees an event from a callsite that another thread, without a subscriber,
/// reached first while the capture was on: the race behind a flaky test here.
#[test]
fn logged_captures_a_callsite_first_reached_elsewhere() {
    fn probe() {
        tracing::warn!("probe event");
    }
    let ((), logs) = logged(|| {
        std::thread::spawn(probe).join().unwrap();
        probe();
    });
    assert!(logs.contains("probe event"), "nothing captured: {logs:?}");
}

fn marker(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(MARKER_FILE))
        .expect("marker file")
        .trim()
        .to_string()
}

#[test]
fn a_fresh_state_dir_gets_a_marker_and_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (store, logs) = logged(|| SledStore::open(&state).unwrap());
    let db = state.join("db");
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains(&new_database_warning(&db)), "{logs}");
    assert!(new_database_warning(&db).contains("every source records a new baseline"));
    let id = marker(&state);
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    baseline(&store, "s", small("s"));
    drop(store);
    // A reopen is quiet and keeps the id.
    let (store, logs) = logged(|| SledStore::open(&state).unwrap());
    assert!(!logs.contains("WARN"), "{logs}");
    assert_eq!(marker(&state), id);
    assert_eq!(store.snapshot("s").unwrap().len(), 3);
}

#[test]
fn a_missing_database_is_refused_until_the_marker_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let store = SledStore::open(state).unwrap();
    baseline(&store, "s", small("s"));
    drop(store);
    let id = marker(state);
    std::fs::remove_dir_all(state.join("db")).unwrap();

    let e = open_err(state);
    assert!(matches!(e, StoreError::Replaced { .. }), "{e:?}");
    let text = e.to_string();
    let db = state.join("db").display().to_string();
    let marker_path = state.join(MARKER_FILE).display().to_string();
    for part in [
        db.as_str(),
        marker_path.as_str(),
        id.as_str(),
        "is not the one this state_dir held",
        "there is no database there",
        "Restore",
        "from a backup",
        "delete",
        "new baseline",
    ] {
        assert!(text.contains(part), "{part:?} missing in: {text}");
    }
    // The refusal created nothing.
    assert!(!state.join("db").exists());
    // An emptied directory is refused the same way.
    std::fs::create_dir(state.join("db")).unwrap();
    assert!(matches!(open_err(state), StoreError::Replaced { .. }));

    // Deleting the marker accepts a new, empty database, with the warning.
    std::fs::remove_file(state.join(MARKER_FILE)).unwrap();
    let (store, logs) = logged(|| SledStore::open(state).unwrap());
    assert!(
        logs.contains(&new_database_warning(&state.join("db"))),
        "{logs}"
    );
    assert!(store.snapshot("s").unwrap().is_empty());
    assert!(store.sources().unwrap().is_empty());
    assert_ne!(marker(state), id);
}

#[test]
fn another_database_in_the_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for state in [&a, &b] {
        let store = SledStore::open(state).unwrap();
        baseline(&store, "s", small("s"));
    }
    let (id_a, id_b) = (marker(&a), marker(&b));
    // b's database moved into a (a restore of the wrong backup, say).
    std::fs::remove_dir_all(a.join("db")).unwrap();
    std::fs::rename(b.join("db"), a.join("db")).unwrap();
    let e = open_err(&a);
    let text = e.to_string();
    assert!(matches!(e, StoreError::Replaced { .. }), "{e:?}");
    assert!(text.contains(&format!("names database {id_a}")), "{text}");
    assert!(
        text.contains(&format!("it holds database {id_b}")),
        "{text}"
    );
}

/// The database in `db` opened with sled itself, as an earlier release would. sled's
/// threads may hold the directory lock for a moment after the last handle is dropped
/// (`SledStore::open` waits for it the same way).
fn raw_open(db: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let config = sled::Config::new()
            .path(db)
            .segment_size(super::state_dir::segment_size(db));
        match config.open() {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("could not acquire lock"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open {}: {e}", db.display()),
        }
    }
}

/// Two builds created databases with 2 MiB log segments, which sled refuses to open
/// with any other size: such a database is opened with its own, and works.
#[test]
fn a_database_with_another_segment_size_opens_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let raw = sled::Config::new()
            .path(&db)
            .segment_size(2 * 1024 * 1024)
            .open()
            .unwrap();
        raw.open_tree("sources-v1").unwrap();
        raw.flush().unwrap();
    }
    assert_eq!(super::state_dir::segment_size(&db), 2 * 1024 * 1024);
    let store = SledStore::open(dir.path()).unwrap();
    baseline(&store, "s", small("s"));
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.snapshot("s").unwrap().len(), small("s").len());
    // A new database gets sled's default.
    let fresh = tempfile::tempdir().unwrap();
    drop(SledStore::open(fresh.path()).unwrap());
    assert_eq!(
        super::state_dir::segment_size(&fresh.path().join("db")),
        super::state_dir::SEGMENT_SIZE
    );
}

#[test]
fn a_database_from_before_the_marker_is_adopted_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    {
        let store = SledStore::open(state).unwrap();
        baseline(&store, "s", small("s"));
    }
    // What an earlier release left: no marker file, no id in the database.
    std::fs::remove_file(state.join(MARKER_FILE)).unwrap();
    {
        let db = raw_open(&state.join("db"));
        db.open_tree(META_TREE).unwrap().remove(ID_KEY).unwrap();
        db.flush().unwrap();
    }
    let (store, logs) = logged(|| SledStore::open(state).unwrap());
    assert!(!logs.contains("WARN"), "{logs}");
    assert!(logs.contains("adopted"), "{logs}");
    assert_eq!(store.snapshot("s").unwrap().len(), 3);
    let id = marker(state);
    drop(store);
    // Adopted for good: the id is in both.
    let store = SledStore::open(state).unwrap();
    assert_eq!(marker(state), id);
    assert_eq!(store.snapshot("s").unwrap().len(), 3);
}

#[test]
fn a_held_lock_is_reported_as_another_pollhook() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path()).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("another pollhook daemon, or a `pollhook` operator command, holds its lock"),
        "{text}"
    );
    assert!(
        text.contains(&dir.path().join("db").display().to_string()),
        "{text}"
    );
}

#[test]
fn permission_denied_names_the_path_and_the_owner_check() {
    // The tests may run as root, which no mode keeps out: classify sled's error as it
    // comes for a directory pollhook's user cannot read.
    let db = Path::new("/var/lib/pollhook/db");
    let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    for e in [
        open_error(db, sled::Error::Io(denied())),
        io_error("create", db, denied()),
    ] {
        assert!(matches!(e, StoreError::OpenDenied { .. }), "{e:?}");
        let text = e.to_string();
        for part in [
            "permission denied on /var/lib/pollhook/db",
            "owner",
            "DynamicUser=",
        ] {
            assert!(text.contains(part), "{part:?} missing in: {text}");
        }
        assert!(
            !text.contains("damaged") && !text.contains("lock"),
            "{text}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}

#[test]
fn damaged_files_are_reported_with_the_way_forward() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    {
        let store = SledStore::open(state).unwrap();
        baseline(&store, "s", small("s"));
    }
    // sled's own checksum over its config file fails.
    let conf = state.join("db/conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&conf, bytes).unwrap();
    let e = open_err(state);
    assert!(matches!(e, StoreError::Damaged { .. }), "{e:?}");
    let text = e.to_string();
    let db = state.join("db").display().to_string();
    for part in [
        format!("the state database in {db} is damaged"),
        "conf".into(),
        "blobs/ (".into(),
        "from a backup".into(),
        format!(
            "`mv {db} {db}.damaged`), delete {} and start afresh",
            state.join(MARKER_FILE).display()
        ),
        "its pending deliveries and snapshots".into(),
        "new baseline".into(),
    ] {
        assert!(text.contains(&part), "{part:?} missing in: {text}");
    }
    assert!(chain(&e).contains("sled reported: "), "{}", chain(&e));
    // Anything sled reports that is neither a lock nor access is damage.
    for error in [
        sled::Error::Unsupported("x".into()),
        sled::Error::ReportableBug("x".into()),
        sled::Error::Io(std::io::ErrorKind::UnexpectedEof.into()),
        sled::Error::Io(std::io::ErrorKind::NotFound.into()),
    ] {
        let e = open_error(&state.join("db"), error);
        assert!(matches!(e, StoreError::Damaged { .. }), "{e:?}");
    }
}

/// A source with one item of 600 KB among 40: its bucket's page is larger than sled
/// keeps inline (a quarter of a log segment: 128 KiB, or 512 KiB in a database made
/// with 2 MiB segments), so it is a file under `db/blobs`.
fn with_a_blob(state: &Path) {
    let store = SledStore::open(state).unwrap();
    let big = incompressible(600_000);
    let items = (0..40)
        .map(|i| {
            let v = if i == 7 {
                json!({"id": i, "big": big})
            } else {
                json!({"id": i})
            };
            (format!("id-{i}"), v)
        })
        .collect();
    baseline(&store, "s", items);
    baseline(&store, "t", small("t"));
}

fn remove_blobs(state: &Path) -> usize {
    let blobs = std::fs::read_dir(state.join("db/blobs")).unwrap();
    let mut n = 0;
    for e in blobs {
        std::fs::remove_file(e.unwrap().path()).unwrap();
        n += 1;
    }
    n
}

#[test]
fn a_missing_blob_file_is_named_and_forget_starts_the_source_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    with_a_blob(state);
    // Sources enough for several sled pages: some keep readable records.
    let others: Vec<String> = (0..40).map(|i| format!("h{i:02}")).collect();
    {
        let store = SledStore::open(state).unwrap();
        for name in &others {
            baseline(&store, name, small(name));
        }
    }
    // sled writes its page-table snapshot (snap.*) when it opens a database with new
    // log entries; from then on, the page table points into the blob file.
    drop(SledStore::open(state).unwrap());
    assert!(remove_blobs(state) >= 1);
    let store = SledStore::open(state).unwrap();
    let e = store.snapshot("s").unwrap_err();
    assert!(matches!(e, StoreError::MissingBlob { .. }), "{e:?}");
    let text = e.to_string();
    let blobs = state.join("db/blobs").display().to_string();
    for part in [
        "source s: cannot read its snapshot record (bucket ".to_string(),
        format!("a file under {blobs} is missing"),
        "run `pollhook forget s`".into(),
        format!("delete {}", state.join(MARKER_FILE).display()),
        "from a backup".into(),
    ] {
        assert!(text.contains(&part), "{part:?} missing in: {text}");
    }
    // The page held the other source's bucket too.
    let e = store.snapshot("t").unwrap_err();
    assert!(e.to_string().starts_with("source t: "), "{e}");
    // The source states are intact, so the poller still knows what it held.
    assert_eq!(store.source_state("s").unwrap().items, 40);
    let readable: Vec<&String> = (others.iter())
        .filter(|n| store.snapshot(n).is_ok())
        .collect();
    assert!(!readable.is_empty());
    // sled 0.34 cannot remove records from a page it cannot read: forget rebuilds the
    // snapshot without them, and starts the source afresh.
    let generation = store.source_state("s").unwrap().generation;
    assert!(store.forget_source("s").unwrap());
    let forgotten = store.source_state("s").unwrap();
    assert!(
        !forgotten.initialized && forgotten.items == 0,
        "{forgotten:?}"
    );
    assert_eq!(forgotten.generation, generation + 1);
    assert!(store.snapshot("s").unwrap().is_empty());
    // A source whose records were lost too now reads short of its stored count (which
    // the poller refuses, naming forget); it is forgotten the ordinary way.
    assert!(store.snapshot("t").unwrap().is_empty());
    assert_eq!(store.source_state("t").unwrap().items, 3);
    assert!(store.forget_source("t").unwrap());
    for name in &readable {
        assert_eq!(store.snapshot(name).unwrap().len(), 3, "{name} was copied");
    }
    baseline(&store, "s", small("s"));
    baseline(&store, "t", small("t"));
    baseline(&store, "u", small("u"));
    drop(store);
    // All of it survives a restart: the rebuilt tree is the one opened.
    let store = SledStore::open(state).unwrap();
    for name in ["s", "t", "u"]
        .iter()
        .copied()
        .chain(readable.iter().map(|n| n.as_str()))
    {
        assert_eq!(store.snapshot(name).unwrap().len(), 3, "{name}");
        assert_eq!(store.source_state(name).unwrap().items, 3, "{name}");
    }
}

#[test]
fn a_blob_file_missing_before_the_page_table_snapshot_loses_the_page_silently() {
    // What sled 0.34 does when the blob goes before it wrote a page-table snapshot: its
    // recovery skips the dangling pointer, and the page's keys are simply gone. The
    // store then holds fewer items than its state counts, which the poller refuses.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    with_a_blob(state);
    assert_eq!(remove_blobs(state), 1);
    let store = SledStore::open(state).unwrap();
    assert!(store.snapshot("s").unwrap().is_empty());
    assert_eq!(store.source_state("s").unwrap().items, 40);
    // Here forgetting works, and the source starts afresh.
    assert!(store.forget_source("s").unwrap());
    assert!(!store.source_state("s").unwrap().initialized);
}
