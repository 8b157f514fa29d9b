//! A real S3 protocol server for tests (DESIGN.md: s3s + s3s-fs, in-process, SigV4
//! checked), on 127.0.0.1, on its own thread and runtime so synchronous tests can start,
//! stop (an outage) and restart it on the same port.
//!
//! Objects land as plain files under `{root}/{bucket}/{key}`, which tests read back to
//! probe them; the listing goes through the S3 API itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

pub const ACCESS_KEY: &str = "liverec-test";
pub const SECRET_KEY: &str = "liverec-test-secret-key";
pub const BUCKET: &str = "rec";
pub const REGION: &str = "us-east-1";

/// The s3s service with PUTs and DELETEs of one key taken one at a time (see above).
#[derive(Clone)]
struct KeyLocked {
    inner: s3s::service::S3Service,
    keys: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for KeyLocked {
    type Response = <s3s::service::S3Service as hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
    >>::Response;
    type Error = <s3s::service::S3Service as hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
    >>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{} {}", req.method(), req.uri()));
        let writes = matches!(*req.method(), http::Method::PUT | http::Method::DELETE);
        let lock = writes.then(|| {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.entry(req.uri().path().to_string())
                .or_default()
                .clone()
        });
        let inner = self.inner.clone();
        Box::pin(async move {
            let _held = match &lock {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            hyper::service::Service::call(&inner, req).await
        })
    }
}

pub struct S3Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Every request served, as "METHOD uri", in arrival order.
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl S3Server {
    /// Starts a server with bucket [`BUCKET`] under `root` on an ephemeral port.
    pub fn start(root: &Path) -> Self {
        Self::start_on(root, "127.0.0.1:0".parse().expect("addr"))
    }

    /// Starts (or restarts) a server on `addr`.
    pub fn start_on(root: &Path, addr: SocketAddr) -> Self {
        std::fs::create_dir_all(root.join(BUCKET)).expect("create bucket dir");
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let root2 = root.to_path_buf();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let requests2 = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let fs = s3s_fs::FileSystem::new(&root2).expect("s3s-fs root");
                let mut b = S3ServiceBuilder::new(fs);
                b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = b.build();
                // s3s-fs checks If-None-Match / If-Match and then writes, with nothing
                // in between held: two racing conditional PUTs of one key could both
                // pass. Real S3 decides them atomically, and the cluster's leases rely
                // on that, so writes of one key are serialized here.
                let service = KeyLocked {
                    inner: service,
                    keys: Arc::default(),
                    requests: requests2,
                };
                // The port may still be held for a moment after a stop: retry briefly.
                let mut listener = None;
                for _ in 0..100 {
                    match TcpListener::bind(addr).await {
                        Ok(l) => {
                            listener = Some(l);
                            break;
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    }
                }
                let listener = listener.expect("bind S3 test server");
                let _ = ready_tx.send(listener.local_addr().expect("local addr"));
                let http = ConnBuilder::new(TokioExecutor::new());
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        r = listener.accept() => {
                            let Ok((socket, _)) = r else { continue };
                            // Like a real S3 front end: without it, a response written as
                            // headers then body waits for the client's delayed ACK (40 ms).
                            let _ = socket.set_nodelay(true);
                            let conn = http
                                .serve_connection(TokioIo::new(socket), service.clone())
                                .into_owned();
                            conns.spawn(async move {
                                let _ = conn.await;
                            });
                        }
                        _ = &mut stop_rx => break,
                    }
                }
                // An outage: every open connection is cut, nothing is finished.
                conns.abort_all();
                drop(listener);
            });
            rt.shutdown_background();
        });
        let addr = ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("S3 test server did not start");
        S3Server {
            addr,
            root: root.to_path_buf(),
            stop: Some(stop_tx),
            thread: Some(thread),
            requests,
        }
    }

    /// The requests served so far ("METHOD uri"), e.g. to count what an idle node costs.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `[storage]` section for a daemon using this server.
    pub fn storage_toml(&self, prefix: &str) -> String {
        format!(
            "[storage]\nkind = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\nregion = \"{REGION}\"\nallow_http = true\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\nprefix = \"{prefix}\"\n",
            self.endpoint()
        )
    }

    /// Stops the server (connections cut); `start_on(root, addr)` brings it back.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The file holding an object.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    fn client(&self) -> (object_store::aws::AmazonS3, tokio::runtime::Runtime) {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_bucket_name(BUCKET)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .expect("S3 client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (store, rt)
    }

    /// Writes one object through the S3 API (what another node sharing the bucket does).
    pub fn put(&self, key: &str, data: &[u8]) {
        use object_store::ObjectStoreExt;
        let (store, rt) = self.client();
        let path = object_store::path::Path::parse(key).expect("object key");
        rt.block_on(store.put(&path, data.to_vec().into()))
            .expect("put object");
    }

    /// Every object key and size, listed through the S3 API (ListObjectsV2).
    pub fn list(&self) -> Vec<(String, u64)> {
        use futures::StreamExt;
        use object_store::ObjectStore;
        let (store, rt) = self.client();
        rt.block_on(async move {
            let mut out = Vec::new();
            let mut s = store.list(None);
            while let Some(m) = s.next().await {
                let m = m.expect("list objects");
                out.push((m.location.to_string(), m.size));
            }
            out.sort();
            out
        })
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_multipart_uploads(&self) -> usize {
        std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        n.starts_with(".upload-") && n.ends_with(".json")
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
