//! The node database's schema and its migrations (issue 11). `PRAGMA user_version` is the
//! number of migrations applied; each start applies the missing ones, in order, each in
//! its own transaction, so a crash mid-migration leaves the previous version intact.
//! Migrations are only ever appended: a released one is never edited.

use std::path::Path;

use rusqlite::Connection;

use super::DbError;

/// Migration `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    r#"
    -- Small facts about this database: whether the JSON-lines index was imported, whether
    -- the local catalog is complete (else it is rebuilt from the store, R-QY-1).
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    ) STRICT;

    -- Every stored recording (R-QY-1), one row per key: model::FileRecord.
    CREATE TABLE recordings (
        key         TEXT PRIMARY KEY NOT NULL,
        format      TEXT NOT NULL,
        domain      TEXT NOT NULL,
        app         TEXT NOT NULL,
        stream      TEXT NOT NULL,
        task_id     TEXT NOT NULL DEFAULT '',
        start_ms    INTEGER NOT NULL,
        end_ms      INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        size        INTEGER NOT NULL,
        expires     INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    -- Each filter of the recordings API walks one of these in (start_ms, key) order, the
    -- order of its answer and of the page token, so no query sorts.
    CREATE INDEX recordings_by_stream ON recordings (domain, app, stream, start_ms, key);
    CREATE INDEX recordings_by_start  ON recordings (start_ms, key);
    CREATE INDEX recordings_by_format ON recordings (format, start_ms, key);
    CREATE INDEX recordings_by_task   ON recordings (task_id, start_ms, key);
    -- The longest recording bounds how far before `from` a file that ends after `from`
    -- can start: max() of this index turns a time range into a start_ms range.
    CREATE INDEX recordings_by_span   ON recordings (end_ms - start_ms);

    -- The retention schedule (R-ST-5): a key leaves it only once its file is deleted.
    -- storage_time is NULL for an expiry restored from the store's catalog.
    CREATE TABLE retention (
        key          TEXT PRIMARY KEY NOT NULL,
        expires_at   INTEGER NOT NULL,
        storage_time INTEGER
    ) STRICT;
    CREATE INDEX retention_due ON retention (expires_at);

    -- Catalog changes not yet in the store (R-QY-1's rebuildable copy), in order.
    CREATE TABLE catalog_outbox (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        op     TEXT NOT NULL CHECK (op IN ('put', 'delete')),
        key    TEXT NOT NULL,
        record TEXT
    ) STRICT;

    -- What the node owes for each closed file (R-ST-4): the steps after close, each one
    -- transaction, so a crash leaves a file either owed or fully indexed.
    CREATE TABLE files (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        spool_path   TEXT NOT NULL,
        key          TEXT NOT NULL,
        format       TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('closed', 'queued', 'stored', 'indexed')),
        storage_time INTEGER NOT NULL DEFAULT 0,
        record       TEXT,
        segments     TEXT,
        updated_ms   INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX files_owed ON files (id) WHERE state <> 'indexed';
    CREATE INDEX files_by_key ON files (key);

    -- Issue 12 adds the callback outbox here (R-CB-1): rows inserted in the same
    -- transaction that indexes the file, so a stored file's callback is never lost nor
    -- announced before the file is indexed.
    "#,
    // Version 2: recovery asks which finished spool files (`{file}.up`) the database
    // knows, by path — the S3 upload queue lives in `files` now (state `queued`), no
    // longer in a `{file}.up.json` beside each file.
    //
    // And the stream index leads with the stream: the API's usual query names the stream
    // alone (`?stream=cam`), which an index led by domain and app cannot serve — at
    // 100 000 recordings that was a full scan, 10 ms per request instead of 0.3 ms. With
    // domain and app given too, their rows are filtered on the way (a stream name is
    // rarely in two apps).
    r#"
    CREATE INDEX files_by_spool_path ON files (spool_path);
    DROP INDEX recordings_by_stream;
    CREATE INDEX recordings_by_stream ON recordings (stream, start_ms, key);
    "#,
    // Version 3: the gaps of a spliced file (R-SP-4), as JSON; NULL when it has none.
    r#"
    ALTER TABLE recordings ADD COLUMN gaps TEXT;
    "#,
    // Version 4: the callback outbox (R-CB-4, issue 13; `db/callbacks.rs`). A file's
    // event is inserted in the transaction that indexes the file; `dedup` keeps a file
    // indexed twice from being announced twice. Events of one `order_key` (an endpoint
    // and a stream) go out in `id` order.
    r#"
    CREATE TABLE callbacks (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id    TEXT NOT NULL UNIQUE,
        dedup       TEXT UNIQUE,
        url         TEXT NOT NULL,
        order_key   TEXT NOT NULL,
        event_type  INTEGER NOT NULL,
        body        TEXT NOT NULL,
        created_ms  INTEGER NOT NULL,
        since_ms    INTEGER NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        next_ms     INTEGER NOT NULL,
        last_error  TEXT,
        sent_ms     INTEGER
    ) STRICT;
    CREATE INDEX callbacks_pending ON callbacks (order_key, id) WHERE status = 'pending';
    CREATE INDEX callbacks_by_status ON callbacks (status, id);
    "#,
    // Version 5: the node that stored a recording, when several share a store (R-SC-1);
    // '' for this node's own. Its files' expiry is another node's job once it is gone
    // longer than `orphan_after`.
    r#"
    ALTER TABLE recordings ADD COLUMN node TEXT NOT NULL DEFAULT '';
    "#,
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`VERSION`]; returns the version it had (0: a new database).
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<i64, DbError> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    if found > VERSION {
        return Err(DbError::FutureVersion {
            path: path.to_path_buf(),
            found,
            known: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let version = i as i64 + 1;
        let res = (|| {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            // PRAGMA takes no bound parameters; `version` is our own constant.
            tx.execute_batch(&format!("PRAGMA user_version = {version}"))?;
            tx.commit()
        })();
        res.map_err(|source| DbError::Migrate { version, source })?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_gets_the_spool_path_index() {
        let mut db = Connection::open_in_memory().unwrap();
        db.execute_batch(MIGRATIONS[0]).unwrap();
        db.execute_batch("PRAGMA user_version = 1").unwrap();
        db.execute(
            "INSERT INTO files (spool_path, key, format, state, updated_ms)
             VALUES ('/s/a.flv.up', 'd/a/s/a.flv', 'flv', 'queued', 0)",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut db, Path::new(":memory:")).unwrap(), 1);
        let v: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        // The row survived, and recovery's lookup by path uses the new index.
        let plan: String = db
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM files WHERE spool_path = '/s/a.flv.up'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("files_by_spool_path"), "{plan}");
        let n: i64 = db
            .query_row("SELECT count(*) FROM files", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
