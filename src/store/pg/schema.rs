//! The PostgreSQL store's tables, created and upgraded at start by numbered migrations.
//!
//! Every instance runs [`migrate`] when it opens the store. The migrations run in one
//! transaction that first takes a transaction-scoped advisory lock
//! (`pg_advisory_xact_lock`, released at commit, so it works behind PgBouncer's
//! transaction pooling): instances starting at once apply each migration exactly once,
//! the others wait and then find it applied. A database newer than this release (a
//! version above [`MIGRATIONS`]) is refused, since this release cannot know what the
//! newer tables mean.
//!
//! Names are `text COLLATE "C"`, so they sort bytewise, as the sled store's keys do.

use tokio_postgres::Client;

use super::Fail;

/// The lock key for migrations (any constant; "pollhook" in ASCII).
const MIGRATION_LOCK: i64 = 0x706f_6c6c_686f_6f6b;

/// The migrations, in order; the schema version is the number applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the sled store's trees as tables.
    r#"
CREATE TABLE pollhook_meta (
    key text COLLATE "C" PRIMARY KEY,
    value bigint NOT NULL
);
-- The outbox's next sequence number, shared by every target, so an event has one
-- sequence in every target's queue. Commits take it with their lock held to the end,
-- so sequence order is commit order and a reader never finds a lower one appear later.
INSERT INTO pollhook_meta VALUES ('next_seq', 1);

CREATE TABLE pollhook_sources (
    name text COLLATE "C" PRIMARY KEY,
    generation bigint NOT NULL DEFAULT 0,
    initialized boolean NOT NULL DEFAULT false,
    items bigint NOT NULL DEFAULT 0,
    collection text
);

CREATE TABLE pollhook_items (
    source text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    hash bytea NOT NULL,
    raw bytea NOT NULL,
    PRIMARY KEY (source, id)
);

CREATE TABLE pollhook_outbox (
    target text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    source text COLLATE "C" NOT NULL,
    item_id text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_at_ms bigint NOT NULL,
    created_ms bigint NOT NULL,
    last_error text,
    body bytea NOT NULL,
    PRIMARY KEY (target, seq)
);

CREATE TABLE pollhook_dead (LIKE pollhook_outbox INCLUDING ALL);

-- Events of a poll with more than one commit, one row per event and target, moved to
-- the outbox by the commit that writes the poll's snapshot.
CREATE TABLE pollhook_stage (
    source text COLLATE "C" NOT NULL,
    chunk integer NOT NULL,
    pos integer NOT NULL,
    target text COLLATE "C" NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    item_id text NOT NULL,
    created_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (source, chunk, pos, target)
);

-- The instances of the cluster: each renews its row while it runs; one whose row has
-- expired is gone (dead, paused or cut off).
CREATE TABLE pollhook_instances (
    name text COLLATE "C" PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- Who polls each source and sends each target's deliveries: one holder at a time,
-- until its lease expires; every takeover increments the epoch, and a commit or an
-- acknowledgement is written only under the epoch its instance claimed.
CREATE TABLE pollhook_leases (
    kind text COLLATE "C" NOT NULL CHECK (kind IN ('source', 'target')),
    name text COLLATE "C" NOT NULL,
    holder text COLLATE "C",
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    epoch bigint NOT NULL DEFAULT 0,
    claimed_at timestamptz,
    PRIMARY KEY (kind, name)
);
"#,
    // 2: a poll of several commits keeps its chunks in a temporary table of its one
    // transaction. A row left here by an older release belongs to a poll that never
    // made its last commit: the next poll of its source detects its changes again.
    r#"
DROP TABLE pollhook_stage;
"#,
    // 3: health records (see `health`): one per source or target that ever failed,
    // replaced only if still the one its writer read.
    r#"
CREATE TABLE pollhook_health (
    subject text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);
"#,
];

/// Brings the database's tables to this release's version; returns that version.
pub(super) async fn migrate(client: &mut Client) -> Result<usize, Fail> {
    let tx = client.transaction().await?;
    // Not "relation already exists, skipping" at every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS pollhook_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM pollhook_schema", &[])
        .await?;
    let at = row.get::<_, i32>(0) as usize;
    if at > MIGRATIONS.len() {
        return Err(Fail::Newer {
            found: at,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(at) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO pollhook_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(MIGRATIONS.len())
}
