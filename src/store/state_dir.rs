//! What a `state_dir` holds besides the database: the marker file that ties it to its
//! database, and why a database could not be opened, told apart for the operator.
//!
//! sled creates a new, empty database wherever it finds none. Without a marker, a lost
//! or emptied `state_dir/db` would be taken for a fresh start: every source would record
//! a new baseline (no events for what changed meanwhile) and the old pending deliveries
//! would be stranded. So the first open writes a random id into the database (tree
//! `meta-v1`, key `id`) and into `state_dir/pollhook-state-id`, and every later open
//! refuses a database that does not hold the id the file names.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::StoreError;

/// The marker file in the state_dir: the id of the database it holds, one line.
pub const MARKER_FILE: &str = "pollhook-state-id";

/// The tree and key of the database's own copy of the id.
pub(super) const META_TREE: &str = "meta-v1";
pub(super) const ID_KEY: &[u8] = b"id";

/// What is logged (at WARN) when a state_dir gets a new database.
pub fn new_database_warning(db_dir: &Path) -> String {
    format!(
        "creating a new state database in {}; every source records a new baseline at its first poll (no events for items that already exist)",
        db_dir.display()
    )
}

/// An io error of the state_dir's own files, by cause.
pub(super) fn io_error(action: &'static str, path: &Path, error: std::io::Error) -> StoreError {
    let path = path.display().to_string();
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => StoreError::OpenDenied { path, error },
        _ => StoreError::OpenIo {
            action,
            path,
            error,
        },
    }
}

/// Why sled refused to open the database in `db_dir`: its lock is held, the file
/// system denied access or is full or read-only, or (anything else) its files are
/// damaged.
pub(super) fn open_error(db_dir: &Path, error: sled::Error) -> StoreError {
    let path = db_dir.display().to_string();
    let text = error.to_string();
    if text.contains("could not acquire lock") {
        return StoreError::Open { path, reason: text };
    }
    match error {
        sled::Error::Io(error) => match error.kind() {
            std::io::ErrorKind::PermissionDenied => StoreError::OpenDenied { path, error },
            std::io::ErrorKind::ReadOnlyFilesystem
            | std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded => StoreError::OpenIo {
                action: "write to",
                path,
                error,
            },
            _ => StoreError::Damaged {
                files: list_files(db_dir),
                path,
                error: Box::new(sled::Error::Io(error)),
            },
        },
        error => StoreError::Damaged {
            files: list_files(db_dir),
            path,
            error: Box::new(error),
        },
    }
}

/// The marker file of the state_dir that holds the database directory `db_dir`, for
/// messages.
pub(super) fn marker_for(db_dir: &str) -> String {
    let db_dir = Path::new(db_dir);
    marker_path(db_dir.parent().unwrap_or(db_dir))
        .display()
        .to_string()
}

/// The entries of `dir` for a message: "blobs/ (2 files), conf, db, snap.00000000000001A0".
pub(super) fn list_files(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return "none: the directory is missing or unreadable".into();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            match std::fs::read_dir(e.path()) {
                Ok(inner) => format!("{name}/ ({} files)", inner.count()),
                Err(_) => name,
            }
        })
        .collect();
    if names.is_empty() {
        return "none: the directory is empty".into();
    }
    names.sort();
    const SHOWN: usize = 12;
    if names.len() > SHOWN {
        let more = names.len() - SHOWN;
        names.truncate(SHOWN);
        names.push(format!("and {more} more"));
    }
    names.join(", ")
}

/// Whether `db_dir` holds anything (sled creates its files at the first open).
pub(super) fn holds_files(db_dir: &Path) -> bool {
    std::fs::read_dir(db_dir).is_ok_and(|mut e| e.next().is_some())
}

/// The id the marker file in `state_dir` names, if there is one.
pub(super) fn read_marker(state_dir: &Path) -> Result<Option<String>, StoreError> {
    let path = state_dir.join(MARKER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", &path, e)),
    }
}

/// Writes the marker file atomically: a temporary file, synced, renamed over the
/// marker, then the directory synced, so a crash leaves the old marker or the new one.
pub(super) fn write_marker(state_dir: &Path, id: &str) -> Result<(), StoreError> {
    let path = state_dir.join(MARKER_FILE);
    let tmp = state_dir.join(format!("{MARKER_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|e| io_error("write", &path, e))
}

/// A new database id: 16 hex digits of SHA-256 over the time, the process id and the
/// directory. Unique enough to tell one state_dir's databases apart; not a secret.
pub(super) fn new_id(db_dir: &Path) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(nanos.to_be_bytes());
    h.update(std::process::id().to_be_bytes());
    h.update(db_dir.as_os_str().as_encoded_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The marker file's path, for messages.
pub(super) fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER_FILE)
}

/// A database just opened in a state_dir, for [`check_marker`].
pub(super) struct Opened<'a> {
    pub state_dir: &'a Path,
    pub db_dir: &'a Path,
    /// Whether `db_dir` held files before this open (else sled just created them).
    pub existed: bool,
    pub db: &'a sled::Db,
    pub meta: &'a sled::Tree,
    pub sources: &'a sled::Tree,
}

/// The refusal of a database that is not the one the marker names.
pub(super) fn replaced(state_dir: &Path, expected: &str, found: String) -> StoreError {
    StoreError::Replaced {
        path: state_dir.join("db").display().to_string(),
        marker: marker_path(state_dir).display().to_string(),
        expected: expected.to_string(),
        found,
    }
}

/// Compares the database's id with the id `marker` names: refuses another database,
/// or gives a database without an id (new, or from an earlier release) one, in both.
pub(super) fn check_marker(o: &Opened<'_>, marker: Option<String>) -> Result<(), StoreError> {
    let open_err = |e| open_error(o.db_dir, e);
    let stored = o.meta.get(ID_KEY).map_err(open_err)?;
    let stored = stored.map(|v| String::from_utf8_lossy(&v).into_owned());
    match (marker, stored) {
        (Some(expected), Some(id)) if expected == id => {}
        (Some(expected), Some(id)) => {
            return Err(replaced(
                o.state_dir,
                &expected,
                format!("it holds database {id}"),
            ));
        }
        (Some(expected), None) => {
            return Err(replaced(
                o.state_dir,
                &expected,
                "it holds no id (it is new or was emptied)".into(),
            ));
        }
        (None, Some(id)) => {
            // The marker was deleted, or a crash came between the two writes below.
            write_marker(o.state_dir, &id)?;
            tracing::info!(dir = %o.db_dir.display(), id, "marker file {MARKER_FILE} written");
        }
        (None, None) => {
            let id = new_id(o.db_dir);
            // The database first: a crash before the marker is written leaves the case
            // above, not a marker naming an id the database lacks.
            o.meta.insert(ID_KEY, id.as_bytes()).map_err(open_err)?;
            o.db.flush().map_err(open_err)?;
            write_marker(o.state_dir, &id)?;
            // An earlier release's database that holds no source is as new as a created
            // one: either way every source records a new baseline.
            let empty = o.sources.first().map_err(open_err)?.is_none();
            if !o.existed || empty {
                tracing::warn!("{}", new_database_warning(o.db_dir));
            } else {
                tracing::info!(dir = %o.db_dir.display(), id, "state database adopted: marker file {MARKER_FILE} written");
            }
        }
    }
    Ok(())
}

/// The log segment size of new databases: sled's default, 512 KiB. sled writes a page
/// larger than a quarter of a segment (128 KiB) to a file of its own under `db/blobs`
/// at every rewrite, and a leaf page holds up to 17 keys, so outbox batches and staged
/// parts are kept to 7 KiB. Larger segments would allow larger pages, but with 2 MiB
/// segments the reliability harness's crash loop (`tests/chaos`, 200 kill -9s) left a
/// database sled could not open again ("Read corrupted data") in two of three runs,
/// and in none of three with 512 KiB.
pub(super) const SEGMENT_SIZE: usize = 512 * 1024;

/// The segment size to open the database in `db_dir` with: the one it was created with
/// (sled refuses another; two builds of 2026-12-02 created databases with 2 MiB), read
/// from sled's `conf` file, or [`SEGMENT_SIZE`] for a new database.
pub(super) fn segment_size(db_dir: &Path) -> usize {
    let Ok(conf) = std::fs::read(db_dir.join("conf")) else {
        return SEGMENT_SIZE;
    };
    // `segment_size: 524288` on a line of its own, then other lines and a checksum.
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size: ")?.trim().parse().ok())
        .unwrap_or(512 * 1024)
}
