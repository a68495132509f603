//! A lean HTTP/1.1 load client: `clients` keep-alive connections, each sending its next request as
//! soon as it has read the answer to the last, the way `wrk` does. The bench client shares the two
//! cores with what it measures; reqwest spent 72 µs of CPU per create on 2026-12-06, more than
//! Redis (54 µs), so the figures said more about the client than about the api (BENCHMARKS.md).

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer: its status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// POSTs `total` requests to `base` (`http://host:port`) + `path` with the key, `clients` at a time:
/// `body(i)` is the i-th. The answers in request order.
pub async fn post_all(
    base: &str,
    path: &str,
    key: &str,
    total: usize,
    clients: usize,
    body: impl Fn(usize) -> Vec<u8>,
) -> anyhow::Result<Vec<Answer>> {
    let host = base
        .strip_prefix("http://")
        .context("an http:// base URL")?
        .trim_end_matches('/')
        .to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Auth-Token: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: "
    );
    // The connections run as futures of this one task: the client takes at most one core.
    let next = AtomicUsize::new(0);
    let connection = || async {
        let mut stream = TcpStream::connect(&host).await?;
        stream.set_nodelay(true)?;
        let mut buffer = Vec::with_capacity(16 * 1024);
        let mut answers = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= total {
                break;
            }
            let payload = body(i);
            let mut request = Vec::with_capacity(head.len() + 16 + payload.len());
            request.extend_from_slice(head.as_bytes());
            request.extend_from_slice(format!("{}\r\n\r\n", payload.len()).as_bytes());
            request.extend_from_slice(&payload);
            stream.write_all(&request).await?;
            answers.push((i, read_answer(&mut stream, &mut buffer).await?));
        }
        anyhow::Ok(answers)
    };
    let connections =
        futures::future::try_join_all((0..clients.max(1)).map(|_| connection())).await?;
    let mut ordered: Vec<Option<Answer>> = (0..total).map(|_| None).collect();
    for answers in connections {
        for (i, answer) in answers {
            ordered[i] = Some(answer);
        }
    }
    ordered
        .into_iter()
        .map(|answer| answer.context("a request without an answer"))
        .collect()
}

/// Reads one answer with a `Content-Length` body (what the api sends) from `stream`; `buffer`
/// keeps what was read past it.
async fn read_answer(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<Answer> {
    loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..end]).context("an ASCII head")?;
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .context("a status line")?;
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .context("a Content-Length")?;
            let start = end + 4;
            while buffer.len() < start + length {
                read_more(stream, buffer).await?;
            }
            let body = buffer[start..start + length].to_vec();
            buffer.drain(..start + length);
            return Ok(Answer { status, body });
        }
        read_more(stream, buffer).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let read = stream.read(&mut chunk).await?;
    if read == 0 {
        bail!("the api closed the connection");
    }
    buffer.extend_from_slice(&chunk[..read]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
