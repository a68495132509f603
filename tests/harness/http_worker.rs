//! A bare HTTP worker for HTTP actions: answers every request `200 worked` after a delay and counts
//! the requests it got. Enough for tests and the chaos harness that only need an action to succeed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct HttpWorker {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpWorker {
    pub async fn start(delay: Duration) -> HttpWorker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the worker");
        let address = format!("http://{}", listener.local_addr().expect("bound"));
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = socket.read(&mut buffer).await;
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nworked",
                        )
                        .await;
                });
            }
        });
        HttpWorker {
            address,
            calls,
            task,
        }
    }

    /// Requests received so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for HttpWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
