//! The in-process S3 server honours conditional writes as S3 does (R-SC-1's stream
//! leases and task ids rely on them): `If-None-Match: *` creates only once, `If-Match`
//! replaces only the version it names, and racing conditional writes of one key have one
//! winner. Driven through object_store's S3 client, the daemon's own.

use std::sync::Arc;

use liverec_testkit::s3::{S3Server, ACCESS_KEY, BUCKET, REGION, SECRET_KEY};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};

fn client(s3: &S3Server) -> Arc<dyn ObjectStore> {
    Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(s3.endpoint())
            .with_bucket_name(BUCKET)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .expect("client"),
    )
}

#[test]
fn conditional_writes_are_honoured_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let store = client(&s3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let path = object_store::path::Path::from("lease/a.json");
        let create = || PutOptions::from(PutMode::Create);
        let first = store
            .put_opts(&path, b"one".to_vec().into(), create())
            .await
            .expect("first create");
        let again = store
            .put_opts(&path, b"two".to_vec().into(), create())
            .await;
        assert!(
            matches!(again, Err(object_store::Error::AlreadyExists { .. })),
            "If-None-Match: * on an existing key must fail: {again:?}"
        );
        let v1 = UpdateVersion {
            e_tag: first.e_tag.clone(),
            version: first.version.clone(),
        };
        let second = store
            .put_opts(
                &path,
                b"three".to_vec().into(),
                PutOptions::from(PutMode::Update(v1.clone())),
            )
            .await
            .expect("update with the current ETag");
        let stale = store
            .put_opts(
                &path,
                b"four".to_vec().into(),
                PutOptions::from(PutMode::Update(v1)),
            )
            .await;
        assert!(
            matches!(stale, Err(object_store::Error::Precondition { .. })),
            "If-Match with a replaced ETag must fail: {stale:?}"
        );
        let got = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"three");
        assert_ne!(second.e_tag, first.e_tag);

        // Racing creates and racing updates of one version: exactly one winner each.
        for round in 0..5 {
            let key = object_store::path::Path::from(format!("race/{round}.json"));
            let mut joins = Vec::new();
            for i in 0..16 {
                let (store, key) = (store.clone(), key.clone());
                joins.push(tokio::spawn(async move {
                    store
                        .put_opts(
                            &key,
                            format!("writer {i}").into_bytes().into(),
                            PutOptions::from(PutMode::Create),
                        )
                        .await
                }));
            }
            let mut won = Vec::new();
            for j in joins {
                if let Ok(r) = j.await.unwrap() {
                    won.push(r);
                }
            }
            assert_eq!(won.len(), 1, "racing creates: one winner");
            let v = UpdateVersion {
                e_tag: won[0].e_tag.clone(),
                version: won[0].version.clone(),
            };
            let mut joins = Vec::new();
            for i in 0..16 {
                let (store, key, v) = (store.clone(), key.clone(), v.clone());
                joins.push(tokio::spawn(async move {
                    store
                        .put_opts(
                            &key,
                            format!("taker {i}").into_bytes().into(),
                            PutOptions::from(PutMode::Update(v)),
                        )
                        .await
                }));
            }
            let mut won = 0;
            for j in joins {
                won += usize::from(j.await.unwrap().is_ok());
            }
            assert_eq!(won, 1, "racing updates of one version: one winner");
        }
    });
}
