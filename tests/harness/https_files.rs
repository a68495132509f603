//! A small HTTPS server of fixed files on 127.0.0.1, with a certificate from a test CA of its own (its
//! PEM written for `[fetch] ca_file`), for tests of files the agent fetches by URL. It answers `GET`
//! of a path it holds with the file, a path of `redirects` with a 302 to its target, anything else
//! 404, and counts the requests each path got. Stops when dropped.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct HttpsFiles {
    /// `https://127.0.0.1:PORT`
    pub base: String,
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the server holds at each path.
pub enum Answer {
    File(Vec<u8>),
    RedirectTo(String),
}

impl HttpsFiles {
    pub async fn start(files: HashMap<String, Answer>) -> HttpsFiles {
        let (ca_pem, config) = tls_config();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let base = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().expect("bound").port()
        );
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let files = Arc::new(files);
        let task = {
            let hits = hits.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (acceptor, files, hits) = (acceptor.clone(), files.clone(), hits.clone());
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve(stream, &files, &hits).await;
                        }
                    });
                }
            })
        };
        HttpsFiles {
            base,
            ca_pem,
            hits,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Writes the CA's PEM into `dir` and returns its path.
    pub fn write_ca(&self, dir: &Path) -> String {
        let path = dir.join("test-ca.pem");
        std::fs::create_dir_all(dir).expect("the test's directory");
        std::fs::write(&path, &self.ca_pem).expect("CA file written");
        path.display().to_string()
    }

    /// Requests the path has had.
    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for HttpsFiles {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA, and a server configuration whose certificate (for 127.0.0.1 and localhost) it signed.
fn tls_config() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "spot-scheduler test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![server.der().clone()];
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server TLS config");
    (ca.pem(), config)
}

/// Answers one request on the connection and closes it.
async fn serve(
    mut stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    files: &HashMap<String, Answer>,
    hits: &Mutex<HashMap<String, usize>>,
) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    *hits
        .lock()
        .expect("hits lock")
        .entry(path.clone())
        .or_default() += 1;
    let (status, headers, body): (&str, String, &[u8]) = match files.get(&path) {
        Some(Answer::File(content)) => ("200 OK", String::new(), content),
        Some(Answer::RedirectTo(target)) => ("302 Found", format!("Location: {target}\r\n"), b""),
        None => ("404 Not Found", String::new(), b"no such file"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}
