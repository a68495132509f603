//! A webhook receiver for notification tests: keeps every request it gets (path, headers, body) and
//! answers each with the next status of its script, then 200.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    script: VecDeque<u16>,
}

pub struct WebhookReceiver {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl WebhookReceiver {
    /// A receiver that answers its first requests with `script`'s statuses, in order, then 200.
    pub fn start(script: &[u16]) -> WebhookReceiver {
        let state = Arc::new(Mutex::new(State {
            received: Vec::new(),
            script: script.iter().copied().collect(),
        }));
        let shared = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new().app_data(shared.clone()).default_service(web::to(
                |request: HttpRequest, body: web::Bytes, state: web::Data<Mutex<State>>| async move {
                    let mut state = state.lock().expect("receiver state");
                    let answered = state.script.pop_front().unwrap_or(200);
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    state.received.push(Received {
                        path: request.path().to_string(),
                        headers,
                        body: body.to_vec(),
                        answered,
                    });
                    HttpResponse::build(
                        actix_web::http::StatusCode::from_u16(answered).expect("a status"),
                    )
                    .finish()
                },
            ))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("the receiver binds");
        let address = format!("http://127.0.0.1:{}", server.addrs()[0].port());
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        WebhookReceiver {
            address,
            state,
            handle,
        }
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("receiver state").received.clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
    }
}
