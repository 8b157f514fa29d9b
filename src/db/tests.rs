use std::collections::HashSet;

use super::*;

fn rec(key: &str, start_ms: i64, end_ms: i64) -> FileRecord {
    let p: Vec<&str> = key.split('/').collect();
    FileRecord {
        key: key.into(),
        format: key.rsplit('.').next().unwrap_or("").into(),
        domain: p.first().copied().unwrap_or("").into(),
        app: p.get(1).copied().unwrap_or("").into(),
        stream: p.get(2).copied().unwrap_or("").into(),
        task_id: String::new(),
        start_ms,
        end_ms,
        duration_ms: end_ms - start_ms,
        size: 1000,
        expires: 0,
        gaps: Vec::new(),
        notice: None,
        node: String::new(),
    }
}

fn keys(recs: &[FileRecord]) -> Vec<&str> {
    recs.iter().map(|r| r.key.as_str()).collect()
}

async fn user_version(db: &Db) -> i64 {
    db.call("test", |c| {
        c.db.query_row("PRAGMA user_version", [], |r| r.get(0))
            .ctx("test", "")
    })
    .await
    .unwrap()
}

async fn count(db: &Db, table: &'static str) -> i64 {
    db.call("test", move |c| {
        c.db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .ctx("test", table)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_new_database_is_migrated_and_a_reopen_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    assert_eq!(db.path(), dir.path().join(DB_FILE));
    assert_eq!(user_version(&db).await, VERSION);
    let mode: String = db
        .call("test", |c| {
            c.db.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .ctx("test", "")
        })
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(db.needs_rebuild(), "nothing imported, nothing rebuilt yet");
    db.record_stored(rec("d/a/s/1.flv", 0, 10), 0, vec![])
        .await
        .unwrap();
    db.close().await;

    let db = Db::open(dir.path()).await.unwrap();
    assert_eq!(user_version(&db).await, VERSION);
    assert_eq!(
        keys(&db.query_all(Default::default()).await.unwrap()),
        ["d/a/s/1.flv"]
    );
    assert_eq!(db.unpublished(), 1, "the outbox count is read back at open");
}

#[tokio::test]
async fn a_database_from_a_newer_liverec_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {}", VERSION + 1))
            .unwrap();
    }
    match Db::open(dir.path()).await {
        Err(DbError::FutureVersion { found, known, .. }) => {
            assert_eq!((found, known), (VERSION + 1, VERSION));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a database of an unknown version"),
    }
    // And it was left as it was.
    let c = Connection::open(&path).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, VERSION + 1);
}

/// Ten recordings over three streams, two formats, two tasks; times in seconds × 1000.
fn fixture() -> Vec<FileRecord> {
    let mut v = vec![
        rec("d/live/a/a1.flv", 0, 600_000),
        rec("d/live/a/a2.flv", 600_000, 1_200_000),
        rec("d/live/a/a3.m3u8", 0, 1_800_000),
        rec("d/live/b/b1.flv", 300_000, 900_000),
        rec("d/live/b/b2.flv", 3_600_000, 4_200_000),
        rec("d/vod/a/v1.flv", 100_000, 200_000),
        rec("e/live/a/e1.flv", 1_200_000, 1_800_000),
        rec("e/live/a/e2.mp4", 1_800_000, 2_400_000),
        rec("d/live/a/a4.flv", 7_200_000, 7_800_000),
        rec("odd-key.flv", 50_000, 60_000),
    ];
    for r in v.iter_mut() {
        if r.key.ends_with(".m3u8") {
            r.format = "hls".into();
        }
    }
    v[1].task_id = "t1".into();
    v[3].task_id = "t1".into();
    v[7].task_id = "t2".into();
    v
}

#[tokio::test]
async fn each_filter_returns_what_was_computed_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    db.record_many(fixture().into_iter().map(|r| (r, 0)).collect())
        .await
        .unwrap();
    let q = |f: RecordingFilter| {
        let db = db.clone();
        async move {
            let all = db.query_all(f.clone()).await.unwrap();
            let (page, next) = db.query(f, PageRequest::default()).await.unwrap();
            assert_eq!(page, all, "under a page, the page is everything");
            assert!(next.is_none());
            all.into_iter().map(|r| r.key).collect::<Vec<_>>()
        }
    };
    let s = |v: &str| Some(v.to_string());

    // Everything, by start then key.
    assert_eq!(
        q(RecordingFilter::default()).await,
        [
            "d/live/a/a1.flv",
            "d/live/a/a3.m3u8",
            "odd-key.flv",
            "d/vod/a/v1.flv",
            "d/live/b/b1.flv",
            "d/live/a/a2.flv",
            "e/live/a/e1.flv",
            "e/live/a/e2.mp4",
            "d/live/b/b2.flv",
            "d/live/a/a4.flv",
        ]
    );
    // One stream.
    let stream = RecordingFilter {
        domain: s("d"),
        app: s("live"),
        stream: s("a"),
        ..Default::default()
    };
    assert_eq!(
        q(stream.clone()).await,
        [
            "d/live/a/a1.flv",
            "d/live/a/a3.m3u8",
            "d/live/a/a2.flv",
            "d/live/a/a4.flv"
        ]
    );
    // A stream name alone matches it in every domain and app.
    assert_eq!(
        q(RecordingFilter {
            stream: s("a"),
            ..Default::default()
        })
        .await,
        [
            "d/live/a/a1.flv",
            "d/live/a/a3.m3u8",
            "d/vod/a/v1.flv",
            "d/live/a/a2.flv",
            "e/live/a/e1.flv",
            "e/live/a/e2.mp4",
            "d/live/a/a4.flv"
        ]
    );
    // Time range [900 s, 1800 s): ends after 900 s and starts before 1800 s.
    assert_eq!(
        q(RecordingFilter {
            from: Some(900),
            to: Some(1800),
            ..Default::default()
        })
        .await,
        ["d/live/a/a3.m3u8", "d/live/a/a2.flv", "e/live/a/e1.flv"]
    );
    // Only `from`: b1 ends exactly at 900 s and is out; a3 (long, started at 0) is in.
    assert_eq!(
        q(RecordingFilter {
            from: Some(900),
            ..Default::default()
        })
        .await,
        [
            "d/live/a/a3.m3u8",
            "d/live/a/a2.flv",
            "e/live/a/e1.flv",
            "e/live/a/e2.mp4",
            "d/live/b/b2.flv",
            "d/live/a/a4.flv"
        ]
    );
    // Only `to`.
    assert_eq!(
        q(RecordingFilter {
            to: Some(100),
            ..Default::default()
        })
        .await,
        ["d/live/a/a1.flv", "d/live/a/a3.m3u8", "odd-key.flv"]
    );
    // Stream and time together.
    assert_eq!(
        q(RecordingFilter {
            from: Some(1000),
            ..stream.clone()
        })
        .await,
        ["d/live/a/a3.m3u8", "d/live/a/a2.flv", "d/live/a/a4.flv"]
    );
    // Format.
    assert_eq!(
        q(RecordingFilter {
            format: s("hls"),
            ..Default::default()
        })
        .await,
        ["d/live/a/a3.m3u8"]
    );
    assert_eq!(
        q(RecordingFilter {
            format: s("mp4"),
            ..Default::default()
        })
        .await,
        ["e/live/a/e2.mp4"]
    );
    // Task.
    assert_eq!(
        q(RecordingFilter {
            task_id: s("t1"),
            ..Default::default()
        })
        .await,
        ["d/live/b/b1.flv", "d/live/a/a2.flv"]
    );
    assert_eq!(
        q(RecordingFilter {
            task_id: s("t1"),
            format: s("flv"),
            stream: s("b"),
            ..Default::default()
        })
        .await,
        ["d/live/b/b1.flv"]
    );
    assert!(q(RecordingFilter {
        task_id: s("none"),
        ..Default::default()
    })
    .await
    .is_empty());
    // Bounds from the network cannot overflow (as the JSON-lines index's test).
    let n = |from, to| {
        q(RecordingFilter {
            from,
            to,
            ..Default::default()
        })
    };
    assert!(n(Some(i64::MAX), None).await.is_empty());
    assert!(n(None, Some(i64::MIN)).await.is_empty());
    assert_eq!(n(Some(i64::MIN), Some(i64::MAX)).await.len(), 10);
}

#[tokio::test]
async fn the_filters_use_indexes_and_never_sort() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let plans = db
        .call("test", |c| {
            let mut out = Vec::new();
            for (filter, want) in [
                (
                    "domain = 'd' AND app = 'a' AND stream = 's'",
                    "recordings_by_stream",
                ),
                ("stream = 's'", "recordings_by_stream"),
                ("app = 'a' AND stream = 's'", "recordings_by_stream"),
                (
                    "end_ms > 5 AND start_ms >= 0 AND start_ms < 10",
                    "recordings_by_start",
                ),
                ("format = 'flv'", "recordings_by_format"),
                ("task_id = 't'", "recordings_by_task"),
            ] {
                let sql = format!(
                    "EXPLAIN QUERY PLAN {RECORD_COLUMNS} WHERE {filter} AND (start_ms, key) > (0, '') ORDER BY start_ms, key LIMIT 10"
                );
                let mut st = c.db.prepare(&sql).ctx("test", "")?;
                let plan: Vec<String> = st
                    .query_map([], |r| r.get::<_, String>(3))
                    .ctx("test", "")?
                    .collect::<Result<_, _>>()
                    .ctx("test", "")?;
                out.push((want, plan.join("; ")));
            }
            let span: String = c
                .db
                .query_row(
                    "EXPLAIN QUERY PLAN SELECT max(end_ms - start_ms) FROM recordings",
                    [],
                    |r| r.get(3),
                )
                .ctx("test", "")?;
            out.push(("recordings_by_span", span));
            Ok(out)
        })
        .await
        .unwrap();
    for (want, plan) in plans {
        assert!(plan.contains(want), "{want}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "sorts: {plan}");
    }
}

#[tokio::test]
async fn pages_walk_2500_recordings_without_duplicates_or_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    // Three recordings share each start, so the key breaks ties across page edges.
    let all: Vec<FileRecord> = (0..2500)
        .map(|i| {
            let s = ["a", "b", "c"][i % 3];
            rec(
                &format!("d/live/{s}/{i:05}.flv"),
                (i / 3) as i64 * 1000,
                (i / 3) as i64 * 1000 + 500,
            )
        })
        .collect();
    db.record_many(all.iter().cloned().map(|r| (r, 0)).collect())
        .await
        .unwrap();
    let walk = |f: RecordingFilter, size: Option<usize>| {
        let db = db.clone();
        async move {
            let (mut got, mut token, mut pages) = (Vec::new(), None, 0);
            loop {
                let (page, next) = db
                    .query(
                        f.clone(),
                        PageRequest {
                            page_size: size,
                            page_token: token,
                        },
                    )
                    .await
                    .unwrap();
                assert!(page.len() <= size.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX));
                pages += 1;
                got.extend(page);
                match next {
                    Some(t) => token = Some(t),
                    None => return (got, pages),
                }
            }
        }
    };
    let want = db.query_all(RecordingFilter::default()).await.unwrap();
    assert_eq!(want.len(), 2500);
    for (size, pages) in [(None, 25), (Some(7), 358), (Some(1000), 3), (Some(5000), 3)] {
        let (got, n) = walk(RecordingFilter::default(), size).await;
        assert_eq!(n, pages, "page size {size:?}");
        assert_eq!(got, want, "page size {size:?}: same rows, same order");
        let unique: HashSet<&str> = got.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(unique.len(), 2500);
    }
    // With a filter: one stream's third, in 13-row pages.
    let f = RecordingFilter {
        stream: Some("b".into()),
        from: Some(100),
        ..Default::default()
    };
    let (got, _) = walk(f.clone(), Some(13)).await;
    assert_eq!(got, db.query_all(f).await.unwrap());
    let expect: Vec<&FileRecord> = all
        .iter()
        .filter(|r| r.stream == "b" && r.end_ms > 100_000)
        .collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), expect);
    // A page size of 0 is one row; a token we did not make is refused.
    let (one, next) = db
        .query(
            RecordingFilter::default(),
            PageRequest {
                page_size: Some(0),
                page_token: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((one.len(), next.is_some()), (1, true));
    for bad in ["zz", "abc", "3a3a", "", &encode_token(0, "x")[2..]] {
        let r = db
            .query(
                RecordingFilter::default(),
                PageRequest {
                    page_size: None,
                    page_token: Some(bad.to_string()),
                },
            )
            .await;
        assert!(matches!(r, Err(DbError::BadPageToken)), "{bad}: {r:?}");
    }
}

#[test]
fn page_tokens_round_trip_any_key() {
    for (s, k) in [(0, ""), (-5, "a:b:c"), (i64::MAX, "d/a/s/é x.flv")] {
        assert_eq!(decode_token(&encode_token(s, k)), Some((s, k.to_string())));
    }
}

#[tokio::test]
async fn retention_entries_leave_only_when_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let now = now_ms();
    db.record_stored(
        rec("d/a/s/p.m3u8", 0, 1),
        10,
        vec!["d/a/s/p_1.ts".into(), "d/a/s/p_2.ts".into()],
    )
    .await
    .unwrap();
    db.record_stored(rec("d/a/s/forever.flv", 0, 1), 0, vec![])
        .await
        .unwrap();
    db.add("d/a/s/plain.aac", 5).await.unwrap();
    let stored = db.query_all(Default::default()).await.unwrap();
    let expires = stored
        .iter()
        .find(|r| r.key == "d/a/s/p.m3u8")
        .unwrap()
        .expires;
    // Whole seconds, never earlier than the full storage time.
    assert!(expires * 1000 >= now + 10_000 && expires * 1000 < now + 12_000);
    assert!(db.take_expired(now, 100).await.unwrap().is_empty());
    let due = db.take_expired(now + 60_000, 100).await.unwrap();
    let due_keys: Vec<&str> = due.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        due_keys,
        [
            "d/a/s/plain.aac",
            "d/a/s/p.m3u8",
            "d/a/s/p_1.ts",
            "d/a/s/p_2.ts"
        ]
    );
    assert_eq!(due[1].storage_time, Some(10));
    assert_eq!(due[1].expires_at, expires * 1000);
    // Taken is not deleted: a crash (or a failed delete) before `deleted` sees them again.
    assert_eq!(db.take_expired(now + 60_000, 100).await.unwrap(), due);
    assert_eq!(db.take_expired(now + 60_000, 2).await.unwrap(), due[..2]);
    let before = db.unpublished();
    db.deleted(vec!["d/a/s/p.m3u8".into(), "d/a/s/p_1.ts".into()])
        .await
        .unwrap();
    assert_eq!(db.unpublished(), before + 1, "only the recording's delete");
    let left: Vec<String> = db
        .take_expired(now + 60_000, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(left, ["d/a/s/plain.aac", "d/a/s/p_2.ts"]);
    assert_eq!(
        keys(&db.query_all(Default::default()).await.unwrap()),
        ["d/a/s/forever.flv"]
    );
    // A restored expiry never shortens a known one (R-ST-5).
    db.expire_at("d/a/s/p_2.ts", 1).await.unwrap();
    db.expire_at("x/y/z/rebuilt.flv", 7).await.unwrap();
    let due = db.take_expired(now + 60_000, 100).await.unwrap();
    assert_eq!(due[0].key, "x/y/z/rebuilt.flv");
    assert_eq!((due[0].expires_at, due[0].storage_time), (7000, None));
    assert!(due
        .iter()
        .any(|e| e.key == "d/a/s/p_2.ts" && e.expires_at > 1000));
    assert!(db.recently_stored("d/a/s/p_2.ts").await.unwrap());
    assert!(db.recently_stored("d/a/s/forever.flv").await.unwrap());
    assert!(!db.recently_stored("d/a/s/p.m3u8").await.unwrap());
}

#[tokio::test]
async fn the_outbox_is_published_in_order_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let wake = db.clone();
    let woken = tokio::spawn(async move { wake.outbox_wake().notified().await });
    db.record_stored(rec("d/a/s/1.flv", 1, 2), 0, vec![])
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), woken)
        .await
        .expect("the publisher is woken")
        .unwrap();
    db.record_stored(rec("d/a/s/2.flv", 2, 3), 1, vec![])
        .await
        .unwrap();
    db.deleted(vec!["d/a/s/2.flv".into()]).await.unwrap();
    assert_eq!(db.unpublished(), 3);
    let ops = db.pending(10).await.unwrap();
    assert_eq!(ops.len(), 3);
    assert!(matches!(&ops[0].1, Op::Put(r) if r.key == "d/a/s/1.flv"));
    assert!(matches!(&ops[1].1, Op::Put(r) if r.key == "d/a/s/2.flv" && r.expires > 0));
    assert_eq!(ops[2].1, Op::Delete("d/a/s/2.flv".into()));
    assert_eq!(db.pending(1).await.unwrap(), ops[..1]);
    db.published(vec![ops[0].0]).await.unwrap();
    // Confirming twice (a retry after a crash) counts once.
    db.published(vec![ops[0].0]).await.unwrap();
    assert_eq!(db.unpublished(), 2);
    assert_eq!(db.pending(10).await.unwrap(), ops[1..]);
    // An unreadable row is handed out as a no-op delete, not an error.
    db.call("test", |c| {
        c.db.execute(
            "INSERT INTO catalog_outbox (op, key, record) VALUES ('put', 'k', '{torn')",
            [],
        )
        .ctx("test", "")
    })
    .await
    .unwrap();
    let last = db.pending(10).await.unwrap().pop().unwrap();
    assert_eq!(last.1, Op::Delete(String::new()));
    db.close().await;
    let db = Db::open(dir.path()).await.unwrap();
    assert_eq!(db.unpublished(), 3);
}

#[tokio::test]
async fn a_rebuild_keeps_the_changes_made_while_it_listed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    assert!(db.needs_rebuild());
    db.record_stored(rec("d/a/s/stale.flv", 0, 1), 0, vec![])
        .await
        .unwrap();
    db.rebuild_start().await.unwrap();
    db.record_stored(rec("d/a/s/new.flv", 5, 6), 0, vec![])
        .await
        .unwrap();
    db.record_stored(rec("d/a/s/gone.flv", 6, 7), 0, vec![])
        .await
        .unwrap();
    db.deleted(vec!["d/a/s/gone.flv".into()]).await.unwrap();
    let n = db
        .replace(vec![
            rec("d/a/s/listed.flv", 1, 2),
            rec("d/a/s/gone.flv", 6, 7),
        ])
        .await
        .unwrap();
    assert_eq!(n, 2);
    let want = ["d/a/s/listed.flv", "d/a/s/new.flv"];
    assert_eq!(keys(&db.query_all(Default::default()).await.unwrap()), want);
    assert!(!db.needs_rebuild());
    db.close().await;
    let db = Db::open(dir.path()).await.unwrap();
    assert!(!db.needs_rebuild(), "a finished rebuild is remembered");
    assert_eq!(keys(&db.query_all(Default::default()).await.unwrap()), want);
}

fn new_file(n: usize) -> NewFile {
    let key = format!("d/live/s/{n:03}.flv");
    NewFile {
        spool_path: PathBuf::from(format!("/spool/d/live/s/{n:03}.flv.part")),
        key: key.clone(),
        format: "flv".into(),
        storage_time: 3600,
        record: Some(rec(&key, n as i64 * 1000, n as i64 * 1000 + 900)),
        segments: vec![],
    }
}

/// Whether each file is either owed (and in no index table) or fully indexed.
async fn check_never_half(db: &Db, ids: &[i64]) -> (usize, usize) {
    let owed: HashSet<i64> = db.owed().await.unwrap().iter().map(|f| f.id).collect();
    let (mut n_owed, mut n_indexed) = (0, 0);
    for &id in ids {
        let f = db.file(id).await.unwrap().unwrap();
        let key = f.file.key.clone();
        let (in_rec, in_ret, in_out): (bool, bool, bool) = db
            .call("test", move |c| {
                let ex = |sql: &str| {
                    c.db.query_row(sql, [&key], |r| r.get::<_, bool>(0))
                        .ctx("test", &key)
                };
                Ok((
                    ex("SELECT EXISTS (SELECT 1 FROM recordings WHERE key = ?1)")?,
                    ex("SELECT EXISTS (SELECT 1 FROM retention WHERE key = ?1)")?,
                    ex("SELECT EXISTS (SELECT 1 FROM catalog_outbox WHERE key = ?1)")?,
                ))
            })
            .await
            .unwrap();
        if f.state == FileState::Indexed {
            assert!(!owed.contains(&id));
            assert!(in_rec && in_ret && in_out, "file {id} half indexed");
            n_indexed += 1;
        } else {
            assert!(owed.contains(&id), "file {id} ({}) not owed", f.state);
            assert!(!in_rec && !in_ret && !in_out, "file {id} half indexed");
            n_owed += 1;
        }
    }
    (n_owed, n_indexed)
}

#[tokio::test]
async fn a_crash_between_or_inside_steps_leaves_a_file_owed_or_indexed_never_half() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut db = Db::open(dir.path()).await.unwrap();
    let (mut ids, mut at) = (Vec::new(), Vec::new());
    for n in 0..40 {
        ids.push(db.owe(new_file(n)).await.unwrap());
        at.push(FileState::Closed);
    }
    // Rounds of random steps, each round ended by a "crash": the handle dropped without
    // a close, sometimes inside the indexing transaction, then the database reopened.
    for round in 0..6 {
        for _ in 0..30 {
            let i = rng.random_range(0..ids.len());
            let (from, local) = (at[i], rng.random_bool(0.5));
            let to = match from {
                FileState::Closed if local => FileState::Stored,
                FileState::Closed => FileState::Queued,
                FileState::Queued => FileState::Stored,
                FileState::Stored => FileState::Indexed,
                FileState::Indexed => continue,
            };
            db.advance(ids[i], from, to).await.unwrap();
            at[i] = to;
        }
        if let Some(i) = (0..ids.len()).find(|&i| at[i] == FileState::Stored) {
            db.call("test", |c| {
                c.crash_before_commit = true;
                Ok(())
            })
            .await
            .unwrap();
            let r = db
                .advance(ids[i], FileState::Stored, FileState::Indexed)
                .await;
            assert!(matches!(r, Err(DbError::Crash)), "{r:?}");
        }
        drop(db);
        db = Db::open(dir.path()).await.unwrap();
        let (owed, indexed) = check_never_half(&db, &ids).await;
        assert_eq!(owed + indexed, ids.len(), "round {round}");
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(db.file(id).await.unwrap().unwrap().state, at[i]);
        }
    }
    // Finish everything: then nothing is owed and every file is indexed once.
    for i in 0..ids.len() {
        let path: &[FileState] = match at[i] {
            FileState::Closed => &[FileState::Queued, FileState::Stored, FileState::Indexed],
            FileState::Queued => &[FileState::Stored, FileState::Indexed],
            FileState::Stored => &[FileState::Indexed],
            FileState::Indexed => &[],
        };
        for &to in path {
            db.advance(ids[i], at[i], to).await.unwrap();
            at[i] = to;
        }
    }
    assert!(db.owed().await.unwrap().is_empty());
    assert_eq!(check_never_half(&db, &ids).await, (0, ids.len()));
    assert_eq!(count(&db, "recordings").await, ids.len() as i64);
    assert_eq!(db.unpublished(), ids.len() as u64);
}

#[tokio::test]
async fn a_step_from_the_wrong_state_or_backwards_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let mut f = new_file(1);
    f.segments = vec!["d/live/s/001_1.ts".into()];
    let id = db.owe(f.clone()).await.unwrap();
    let owed = db.owed().await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!((owed[0].id, owed[0].state), (id, FileState::Closed));
    assert_eq!(owed[0].file, f);
    assert!(
        db.recently_stored(&f.key).await.unwrap(),
        "owed names are taken"
    );
    let r = db.advance(id, FileState::Queued, FileState::Stored).await;
    assert!(
        matches!(
            r,
            Err(DbError::WrongState {
                found: FileState::Closed,
                ..
            })
        ),
        "{r:?}"
    );
    let r = db.advance(id, FileState::Closed, FileState::Closed).await;
    assert!(matches!(r, Err(DbError::Backwards { .. })), "{r:?}");
    let r = db
        .advance(id + 1, FileState::Closed, FileState::Queued)
        .await;
    assert!(matches!(r, Err(DbError::NoSuchFile { .. })), "{r:?}");
    // Closed straight to indexed: a local store is the rename plus this one step.
    db.advance(id, FileState::Closed, FileState::Indexed)
        .await
        .unwrap();
    let r = db.advance(id, FileState::Closed, FileState::Indexed).await;
    assert!(
        matches!(r, Err(DbError::WrongState { .. })),
        "a retry is refused"
    );
    let due: Vec<String> = db
        .take_expired(i64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(due, ["d/live/s/001.flv", "d/live/s/001_1.ts"]);
    assert_eq!(db.unpublished(), 1);
    // Deleting the file ends its row too.
    db.deleted(due).await.unwrap();
    assert!(db.file(id).await.unwrap().is_none());
    // A corrupt row is an error for its own step and skipped by `owed`, never a panic.
    let id2 = db.owe(new_file(2)).await.unwrap();
    db.call("test", move |c| {
        c.db.execute("UPDATE files SET record = '{torn' WHERE id = ?1", [id2])
            .ctx("test", id2)
    })
    .await
    .unwrap();
    assert!(db.owed().await.unwrap().is_empty());
    let r = db.advance(id2, FileState::Closed, FileState::Queued).await;
    assert!(matches!(r, Err(DbError::Corrupt { .. })), "{r:?}");
}

/// Seconds the old spool's expiries count from (fixed: the old index wrote absolute ones).
const T0: i64 = 1_800_000_000;

/// A spool as the JSON-lines index of earlier versions (`sink::retention::Index`, removed
/// when this database was wired in) left it, written line by line in its formats: per
/// stream `recordings/{domain}/{app}/{stream}.jsonl` (records and `{"deleted": key}`
/// tombstones; keys not of that shape in `_other.jsonl`), retention entries in
/// `{hour of expiry}.jsonl`, and the catalog queue `publish.jsonl`. The same operations as
/// the old test drove through `Index`: a (task t1, 3600 s), b (forever), c (60 s, then
/// swept), the playlist p with 2 segments (120 s), odd.flv, and an expiry restored by a
/// rebuild. Returns what the old index answered to [`filters`], in order.
fn old_spool(spool: &Path) -> Vec<Vec<FileRecord>> {
    let dir = spool.join(LEGACY_INDEX_DIR);
    let line = |rel: &str, v: &serde_json::Value| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        std::io::Write::write_all(&mut f, format!("{v}\n").as_bytes()).unwrap();
    };
    let json = |r: &FileRecord| serde_json::to_value(r).unwrap();
    let expire = |key: &str, at: i64| {
        line(
            &format!("{}.jsonl", at.div_euclid(3600)),
            &serde_json::json!({ "key": key, "expires": at }),
        )
    };
    let mut a = rec("d/live/s/a.flv", 1000, 2000);
    a.task_id = "t1".into();
    a.expires = T0 + 3600;
    line("recordings/d/live/s.jsonl", &json(&a));
    line("publish.jsonl", &serde_json::json!({ "put": json(&a) }));
    expire(&a.key, T0 + 3600);
    let b = rec("d/live/s/b.flv", 2000, 3000);
    line("recordings/d/live/s.jsonl", &json(&b));
    line("publish.jsonl", &serde_json::json!({ "put": json(&b) }));
    let mut c = rec("d/live/t/c.mp4", 3000, 4000);
    c.expires = T0 + 60;
    line("recordings/d/live/t.jsonl", &json(&c));
    line("publish.jsonl", &serde_json::json!({ "put": json(&c) }));
    expire(&c.key, T0 + 60);
    // Swept: a tombstone and a queued delete (its retention line stays, as the old
    // sweep's `forget` left it).
    line(
        "recordings/d/live/t.jsonl",
        &serde_json::json!({ "deleted": c.key }),
    );
    line("publish.jsonl", &serde_json::json!({ "delete": c.key }));
    let mut p = rec("e/vod/u/p.m3u8", 500, 9000);
    p.expires = T0 + 120;
    line("recordings/e/vod/u.jsonl", &json(&p));
    line("publish.jsonl", &serde_json::json!({ "put": json(&p) }));
    for k in ["e/vod/u/p_1.ts", "e/vod/u/p_2.ts", "e/vod/u/p.m3u8"] {
        expire(k, T0 + 120);
    }
    let odd = rec("odd.flv", 4000, 5000);
    line("recordings/_other.jsonl", &json(&odd));
    line("publish.jsonl", &serde_json::json!({ "put": json(&odd) }));
    expire("x/y/z/rebuilt.flv", 12_345);
    vec![
        vec![p.clone(), a.clone(), b.clone(), odd.clone()],
        vec![a.clone(), b.clone()],
        vec![p.clone(), b, odd],
        vec![p],
        vec![a],
    ]
}

/// The retention entries of [`old_spool`] (key, unix ms).
fn old_due() -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = [
        ("d/live/s/a.flv", T0 + 3600),
        ("d/live/t/c.mp4", T0 + 60),
        ("e/vod/u/p_1.ts", T0 + 120),
        ("e/vod/u/p_2.ts", T0 + 120),
        ("e/vod/u/p.m3u8", T0 + 120),
        ("x/y/z/rebuilt.flv", 12_345),
    ]
    .into_iter()
    .map(|(k, at)| (k.to_string(), at * 1000))
    .collect();
    v.sort();
    v
}

fn filters() -> Vec<RecordingFilter> {
    let s = |v: &str| Some(v.to_string());
    vec![
        Default::default(),
        RecordingFilter {
            domain: s("d"),
            app: s("live"),
            stream: s("s"),
            ..Default::default()
        },
        RecordingFilter {
            from: Some(2),
            to: Some(5),
            ..Default::default()
        },
        RecordingFilter {
            format: s("m3u8"),
            ..Default::default()
        },
        RecordingFilter {
            task_id: s("t1"),
            ..Default::default()
        },
    ]
}

#[tokio::test]
async fn the_json_lines_index_is_imported_once_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    let old_dir = spool.join(LEGACY_INDEX_DIR);
    // What the old index answered.
    let answers = old_spool(spool);
    assert_eq!(answers[0].len(), 4, "c.mp4 was deleted");
    // The store confirmed the first change (as `Index::published` wrote it).
    let queue = std::fs::read(old_dir.join("publish.jsonl")).unwrap();
    let first = queue.iter().position(|&b| b == b'\n').unwrap() + 1;
    std::fs::write(old_dir.join("publish.offset"), first.to_string()).unwrap();
    let old_due = old_due();
    // Torn last lines everywhere a crash could leave one.
    let tear = |p: PathBuf, bytes: &[u8]| {
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
    };
    tear(
        old_dir.join("recordings/d/live/s.jsonl"),
        b"{\"key\":\"d/li",
    );
    tear(old_dir.join("publish.jsonl"), b"{\"put\":{\"ke");
    let hour = std::fs::read_dir(&old_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "jsonl")
                && p.is_file()
                && p.file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.parse::<i64>().is_ok())
        })
        .unwrap();
    tear(hour, b"not json\n{\"key\":\"x\",\"exp");

    let db = Db::open(spool).await.unwrap();
    assert!(!old_dir.exists(), "moved aside");
    assert!(spool.join(".index.imported").is_dir());
    assert!(!db.needs_rebuild(), "the old spool had a catalog");
    for (f, want) in filters().into_iter().zip(&answers) {
        assert_eq!(&db.query_all(f.clone()).await.unwrap(), want, "{f:?}");
    }
    let mut due: Vec<(String, i64)> = db
        .take_expired(i64::MAX, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.expires_at))
        .collect();
    due.sort();
    assert_eq!(due, old_due);
    assert_eq!(
        due.len(),
        6,
        "a, c, the playlist, its 2 segments, the rebuilt one"
    );
    // The queue after the confirmed offset: puts of b, c, p, odd, and c's delete.
    assert_eq!(db.unpublished(), 5);
    let ops: Vec<Op> = db
        .pending(100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    let kinds: Vec<String> = ops
        .iter()
        .map(|o| match o {
            Op::Put(r) => format!("put {}", r.key),
            Op::Delete(k) => format!("delete {k}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "put d/live/s/b.flv",
            "put d/live/t/c.mp4",
            "delete d/live/t/c.mp4",
            "put e/vod/u/p.m3u8",
            "put odd.flv"
        ]
    );
    db.close().await;

    // A second start imports nothing, even when a crash had kept the rename from
    // happening after the import committed.
    copy_dir(&spool.join(".index.imported"), &old_dir);
    let db = Db::open(spool).await.unwrap();
    assert_eq!(db.unpublished(), 5);
    assert_eq!(count(&db, "recordings").await, 4);
    assert!(!old_dir.exists());
    assert!(spool.join(".index.imported.1").is_dir());
}

#[test]
fn unreadable_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("recordings/d/a")).unwrap();
    let good = serde_json::to_string(&rec("d/a/s/1.flv", 1, 2)).unwrap();
    std::fs::write(
        d.join("recordings/d/a/s.jsonl"),
        format!("{good}\n\n{{\"neither\":1}}\n\u{1}\n{{\"deleted\":\"d/a/s/0.flv\"}}\n{{\"ke"),
    )
    .unwrap();
    std::fs::write(
        d.join("100.jsonl"),
        "{\"key\":\"k\",\"expires\":360000}\n[]\n",
    )
    .unwrap();
    std::fs::write(d.join("publish.jsonl"), "{\"delete\":\"k\"}\n{\"put\":1}\n").unwrap();
    std::fs::write(d.join("publish.offset"), "junk").unwrap();
    let mut c = Connection::open_in_memory().unwrap();
    schema::migrate(&mut c, Path::new(":memory:")).unwrap();
    let tx = c.transaction().unwrap();
    let r = import::import(&tx, d).unwrap();
    assert_eq!(
        r,
        import::Imported {
            recordings: 1,
            retention: 1,
            outbox: 1,
            skipped_lines: 5,
            catalog: true,
        }
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// The node database at scale, in every run: inserted rows come back exactly through the
/// stream and time-range queries (expectations computed from the generator, not the DB),
/// and the timings are printed for benches/README.md. CI runs a small scale; the figures
/// in the README come from `LIVEREC_BENCH_ROWS=100000 LIVEREC_BENCH_SINGLE_ROWS=100000`
/// with `LIVEREC_BENCH_DIR` on the spool's filesystem (default: the system temp directory).
#[tokio::test]
async fn node_db_at_scale() {
    use std::time::Instant;
    let env_rows = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
            .max(1000)
    };
    let n_rows = env_rows("LIVEREC_BENCH_ROWS", 20_000);
    let single_rows = env_rows("LIVEREC_BENCH_SINGLE_ROWS", 1000);
    let dir = match std::env::var("LIVEREC_BENCH_DIR") {
        Ok(base) => tempfile::tempdir_in(base).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let db = Db::open(dir.path()).await.unwrap();
    // 1 000 streams × (rows / 1 000) half-hour files, 1 s apart across streams.
    let make = |i: usize| {
        let (s, n) = (i % 1000, i / 1000);
        let start = 1_700_000_000_000 + n as i64 * 1_800_000 + s as i64 * 1000;
        rec(
            &format!("d/live/s{s:04}/{n:03}.flv"),
            start,
            start + 1_800_000,
        )
    };
    let t = Instant::now();
    for chunk in (0..n_rows).collect::<Vec<_>>().chunks(1000) {
        db.record_many(chunk.iter().map(|&i| (make(i), 86_400)).collect())
            .await
            .unwrap();
    }
    let batched = t.elapsed();
    println!(
        "insert {n_rows} recordings, 1000 per transaction: {batched:.2?} ({:.0} rows/s)",
        n_rows as f64 / batched.as_secs_f64()
    );

    let dir2 = tempfile::tempdir_in(dir.path()).unwrap();
    let db2 = Db::open(dir2.path()).await.unwrap();
    let t = Instant::now();
    for i in 0..single_rows {
        db2.record_stored(make(i), 86_400, vec![]).await.unwrap();
    }
    let single = t.elapsed();
    println!(
        "insert {single_rows} recordings, one transaction each: {single:.2?} ({:.0} tx/s, {:.0} µs/tx)",
        single_rows as f64 / single.as_secs_f64(),
        single.as_micros() as f64 / single_rows as f64
    );
    assert_eq!(
        db2.query_all(RecordingFilter::default())
            .await
            .unwrap()
            .len(),
        single_rows
    );
    db2.close().await;

    let stream = RecordingFilter {
        domain: Some("d".into()),
        app: Some("live".into()),
        stream: Some("s0500".into()),
        ..Default::default()
    };
    // An hour in the middle of the recorded span; a file overlaps it when it ends after
    // its start and starts before its end.
    let hour_from = (1_700_000_000_000 + (n_rows / 2000) as i64 * 1_800_000) / 1000;
    let hour = RecordingFilter {
        from: Some(hour_from),
        to: Some(hour_from + 3600),
        ..Default::default()
    };
    let all: Vec<FileRecord> = (0..n_rows).map(make).collect();
    let in_stream = all.iter().filter(|r| r.stream == "s0500").count();
    let in_hour = all
        .iter()
        .filter(|r| r.end_ms > hour_from * 1000 && r.start_ms < (hour_from + 3600) * 1000)
        .count();
    for (name, f, page, want) in [
        ("one stream", stream, 1000, in_stream),
        (
            "one hour, first page of 1000",
            hour,
            1000,
            in_hour.min(1000),
        ),
    ] {
        let query = || {
            db.query(
                f.clone(),
                PageRequest {
                    page_size: Some(page),
                    page_token: None,
                },
            )
        };
        let (rows, _) = query().await.unwrap();
        assert_eq!(rows.len(), want, "{name}");
        let runs = 200;
        let t = Instant::now();
        for _ in 0..runs {
            query().await.unwrap();
        }
        println!(
            "query {name}: {} rows, {:.0} µs per query",
            rows.len(),
            t.elapsed().as_micros() as f64 / runs as f64
        );
    }
    let t = Instant::now();
    let full_hour = db
        .query_all(RecordingFilter {
            from: Some(hour_from),
            to: Some(hour_from + 3600),
            ..Default::default()
        })
        .await
        .unwrap();
    println!(
        "query one hour, all: {} rows in {:.0} µs",
        full_hour.len(),
        t.elapsed().as_micros()
    );
    assert_eq!(full_hour.len(), in_hour, "the whole hour");
    let size = std::fs::metadata(db.path()).map(|m| m.len()).unwrap_or(0);
    println!(
        "database file: {:.1} MB for {n_rows} recordings",
        size as f64 / 1e6
    );
    db.close().await;
}

#[tokio::test]
async fn add_all_schedules_every_key_without_a_recording_or_catalog_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let keys = vec!["d/a/s/p_1.ts".to_string(), "d/a/s/p.m3u8".to_string()];
    db.add_all(keys.clone(), 60).await.unwrap();
    // Forever: nothing to schedule.
    db.add_all(vec!["d/a/s/q.m3u8".into()], 0).await.unwrap();
    let mut due: Vec<String> = db
        .take_expired(i64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    due.sort();
    assert_eq!(due, ["d/a/s/p.m3u8", "d/a/s/p_1.ts"]);
    assert_eq!(count(&db, "recordings").await, 0);
    assert_eq!(db.unpublished(), 0);
    // Scheduled keys are taken for R-ST-3's collision check.
    for k in &keys {
        assert!(db.recently_stored(k).await.unwrap(), "{k}");
    }
}

fn noticed_file(n: usize) -> NewFile {
    let mut f = new_file(n);
    if let Some(r) = f.record.as_mut() {
        r.notice = Some(Box::new(crate::model::Notice {
            url: "http://cb.test/hook".into(),
            file_events: true,
            status_events: true,
            ..Default::default()
        }));
    }
    f
}

/// R-CB-4: a file's event exists exactly when its index entry does — a crash inside
/// the indexing transaction leaves neither, indexing the same file again (a recovery)
/// adds no second event, and the notice never reaches the catalog.
#[tokio::test]
async fn a_file_event_is_queued_with_its_index_entry_once_and_never_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(dir.path()).await.unwrap();
    let id = db.owe(noticed_file(1)).await.unwrap();
    db.advance(id, FileState::Closed, FileState::Stored)
        .await
        .unwrap();
    db.call("test", |c| {
        c.crash_before_commit = true;
        Ok(())
    })
    .await
    .unwrap();
    let r = db.advance(id, FileState::Stored, FileState::Indexed).await;
    assert!(matches!(r, Err(DbError::Crash)), "{r:?}");
    drop(db);
    db = Db::open(dir.path()).await.unwrap();
    assert_eq!(
        count(&db, "callbacks").await,
        0,
        "no event without its entry"
    );
    assert_eq!(count(&db, "recordings").await, 0);

    db.advance(id, FileState::Stored, FileState::Indexed)
        .await
        .unwrap();
    assert_eq!(count(&db, "recordings").await, 1);
    let (due, _) = db.callbacks_due(i64::MAX, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].body["object_key"], "d/live/s/001.flv");
    assert_eq!(due[0].body["event_type"], 100);
    // The same file indexed again (recovery after a crash before its `files` row moved).
    let again = noticed_file(1).record.unwrap();
    db.record_stored(again, 3600, vec![]).await.unwrap();
    assert_eq!(count(&db, "callbacks").await, 1, "announced once");
    // The catalog's copy carries no callback target.
    let queued = db.pending(10).await.unwrap();
    for (_, op) in queued {
        if let Op::Put(r) = op {
            assert!(r.notice.is_none(), "{r:?}");
        }
    }
    let listed = db.query_all(Default::default()).await.unwrap();
    assert!(listed.iter().all(|r| r.notice.is_none()));
}

/// R-CB-4: one order key's events go one at a time in queue order (the next waits
/// for the head, even while the head backs off); other keys are not held back; a
/// failed head stops holding its key; a retried failed event is pending again.
#[tokio::test]
async fn due_events_are_each_keys_oldest_and_failed_ones_can_be_retried() {
    use crate::callback::event::NewEvent;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let ev = |id: &str, key: &str| NewEvent {
        event_id: id.into(),
        event_type: 332,
        url: "http://x".into(),
        order_key: key.into(),
        dedup: None,
        body: serde_json::json!({"n": id}),
    };
    for (id, key) in [("a1", "A"), ("a2", "A"), ("b1", "B")] {
        db.queue_callback(ev(id, key)).await.unwrap();
    }
    let ids = |v: &[Callback]| v.iter().map(|c| c.event_id.clone()).collect::<Vec<_>>();
    let far = i64::MAX / 2;
    let (due, _) = db.callbacks_due(far, 10).await.unwrap();
    assert_eq!(ids(&due), ["a1", "b1"]);
    let a1 = due[0].id;
    db.callback_retry_at(a1, far + 1000, "HTTP 500".into())
        .await
        .unwrap();
    let (due, next) = db.callbacks_due(far, 10).await.unwrap();
    assert_eq!(ids(&due), ["b1"], "a2 waits behind a1 backing off");
    assert_eq!(next, Some(far + 1000));
    db.callback_failed(a1, far, "gave up".into()).await.unwrap();
    let (due, _) = db.callbacks_due(far, 10).await.unwrap();
    assert_eq!(ids(&due), ["a2", "b1"], "a failed head no longer holds A");
    let failed = db.callbacks(Some("failed".into()), 10).await.unwrap();
    assert_eq!(ids(&failed), ["a1"]);
    assert_eq!(failed[0].attempts, 2);
    assert_eq!(db.retry_callback("a1".into()).await.unwrap(), Some(true));
    assert_eq!(db.retry_callback("a2".into()).await.unwrap(), Some(false));
    assert_eq!(db.retry_callback("zz".into()).await.unwrap(), None);
    let (due, _) = db.callbacks_due(i64::MAX, 10).await.unwrap();
    let mut heads = ids(&due);
    heads.sort();
    assert_eq!(heads, ["a1", "b1"], "retried a1 is A's head again");
    db.callback_sent(due[0].id, 5).await.unwrap();
    let counts = db.callback_counts().await.unwrap();
    assert_eq!((counts.pending, counts.failed), (2, 0));
}
