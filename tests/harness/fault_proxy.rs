//! A TCP proxy on 127.0.0.1 that puts faults between a service and a server (Redis, RabbitMQ): it
//! can hold every byte back for a while (latency, with jitter) or cut the link (every connection
//! closed at once, new ones refused) until it is restored. The faults the chaos harness applies to a
//! provisioner's own links, without touching the other services'. Stops when dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    /// The port to give the service instead of the server's.
    pub port: u16,
    faults: Arc<Faults>,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Faults {
    /// Held back before each chunk is passed on, in ms (0: none).
    latency_ms: AtomicU64,
    /// Up to this much more, drawn per chunk.
    jitter_ms: AtomicU64,
    cut: AtomicBool,
}

impl FaultProxy {
    /// A proxy to `target` (`host:port`).
    pub async fn start(target: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let port = listener.local_addr().expect("bound").port();
        let faults = Arc::new(Faults::default());
        let (cut, cut_watch) = watch::channel(false);
        let task = {
            let faults = faults.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if faults.cut.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let (faults, target, cut) = (faults.clone(), target.clone(), cut_watch.clone());
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(&target).await {
                            relay(client, server, faults, cut).await;
                        }
                    });
                }
            })
        };
        FaultProxy {
            port,
            faults,
            cut,
            task,
        }
    }

    /// A proxy in front of the server a `redis://` or `amqp://` URL names, and the URL that reaches
    /// the server through it.
    pub async fn in_front_of(url: &str) -> (FaultProxy, String) {
        let mut url = url::Url::parse(url).expect("a server URL");
        let target = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(match url.scheme() {
                "amqp" => 5672,
                _ => 6379,
            })
        );
        let proxy = FaultProxy::start(target).await;
        url.set_port(Some(proxy.port)).expect("a URL with a port");
        (proxy, url.to_string())
    }

    /// Every chunk held back `latency` plus up to `jitter`, both ways.
    pub fn slow_down(&self, latency: Duration, jitter: Duration) {
        self.faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
        self.faults
            .jitter_ms
            .store(jitter.as_millis() as u64, Ordering::SeqCst);
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.faults.cut.store(true, Ordering::SeqCst);
        let _ = self.cut.send(true);
    }

    /// No more faults.
    pub fn restore(&self) {
        self.slow_down(Duration::ZERO, Duration::ZERO);
        self.faults.cut.store(false, Ordering::SeqCst);
        let _ = self.cut.send(false);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passes bytes both ways until either side closes or the link is cut.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    faults: Arc<Faults>,
    cut: watch::Receiver<bool>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pipe(client_read, server_write, &faults, cut.clone()) => {}
        _ = pipe(server_read, client_write, &faults, cut) => {}
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: &Faults,
    mut cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = cut.wait_for(|cut| *cut) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let latency = faults.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            let jitter = faults.jitter_ms.load(Ordering::SeqCst);
            let extra = if jitter > 0 {
                rand::rng().random_range(0..=jitter)
            } else {
                0
            };
            tokio::time::sleep(Duration::from_millis(latency + extra)).await;
        }
        if faults.cut.load(Ordering::SeqCst) || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
