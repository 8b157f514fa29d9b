//! The storage backends behind the sink (R-ST-1): the local recordings directory, or an
//! S3-compatible bucket through `object_store`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStoreExt, RetryConfig};

use crate::config::StorageConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("S3 configuration: {0}")]
    Config(object_store::Error),
    #[error("storage.prefix {prefix:?}: {source}")]
    Prefix {
        prefix: String,
        source: object_store::path::Error,
    },
}

pub enum Backend {
    Local { root: PathBuf },
    S3(S3Backend),
}

pub struct S3Backend {
    pub store: Arc<AmazonS3>,
    /// `""` or `"a/b/"`: prepended to every key.
    pub prefix: String,
    pub bucket: String,
    pub part_size: usize,
    pub concurrency: usize,
}

impl S3Backend {
    /// The object path of a key (`{domain}/{app}/{stream}/{file}`), with the prefix.
    pub fn path(&self, key: &str) -> Result<ObjectPath, object_store::path::Error> {
        ObjectPath::parse(format!("{}{key}", self.prefix))
    }

    /// A cheap request that needs a reachable bucket and valid credentials: a HEAD of a
    /// key that does not exist answers 404 when all is well.
    pub async fn check(&self) -> Result<(), object_store::Error> {
        let probe = ObjectPath::parse(format!("{}.liverec/probe", self.prefix)).map_err(|e| {
            object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            }
        })?;
        match self.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

pub fn build(cfg: &StorageConfig) -> Result<Backend, StoreError> {
    if cfg.kind != "s3" {
        return Ok(Backend::Local {
            root: cfg.root.clone(),
        });
    }
    // from_env first, so AWS_* variables fill in whatever the file leaves empty.
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_virtual_hosted_style_request(cfg.virtual_hosted_style);
    if !cfg.endpoint.is_empty() {
        b = b.with_endpoint(&cfg.endpoint);
    }
    if !cfg.access_key_id.is_empty() {
        b = b.with_access_key_id(&cfg.access_key_id);
    }
    if !cfg.secret_access_key.is_empty() {
        b = b.with_secret_access_key(&cfg.secret_access_key);
    }
    if !cfg.session_token.is_empty() {
        b = b.with_token(&cfg.session_token);
    }
    // Our uploader retries forever with its own backoff (R-ST-4); object_store's own
    // retries are kept short so an outage surfaces quickly and is logged by us.
    b = b.with_retry(RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
        backoff: Default::default(),
    });
    // `with_client_options` replaces the whole ClientOptions, resetting allow_http, so
    // allow_http is set on the options themselves (crates.md, object_store gotcha).
    b = b.with_client_options(
        ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60))
            .with_allow_http(cfg.allow_http),
    );
    let store = b.build().map_err(StoreError::Config)?;
    let prefix = cfg.prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        ObjectPath::parse(prefix).map_err(|source| StoreError::Prefix {
            prefix: prefix.into(),
            source,
        })?;
        format!("{prefix}/")
    };
    Ok(Backend::S3(S3Backend {
        store: Arc::new(store),
        prefix,
        bucket: cfg.bucket.clone(),
        part_size: cfg.part_size as usize,
        concurrency: cfg.upload_concurrency,
    }))
}
