//! Builds the api from its configuration: connects to Redis and RabbitMQ, declares the topology,
//! binds the listener (port 0 picks a free one, as tests do) and wires the routes.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use spot_shared::auth::Keyring;
use spot_shared::config::Settings;

use crate::routes;
use crate::state::AppState;

pub struct Application {
    port: u16,
    server: Server,
    /// Writes the audit log; ends once the server's state is gone and what it queued is written.
    audit_writer: tokio::task::JoinHandle<()>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let (store, broker) = spot_shared::connect(&settings).await?;
        let keyring = Keyring::from_settings(&settings.auth);
        if keyring.is_empty() {
            tracing::warn!(
                "no account keys are configured: every authenticated request will get 403"
            );
        }
        let listener = TcpListener::bind((settings.api.host.as_str(), settings.api.port))
            .with_context(|| format!("binding {}:{}", settings.api.host, settings.api.port))?;
        let port = listener.local_addr()?.port();
        let max_body = settings.api.max_body_bytes;
        let ec2 = spot_shared::instance_power::Ec2::for_deployment(&settings).await;
        let fetch = spot_shared::file_source::FetchSpec::from_settings(
            &settings.fetch,
            &settings.outbound,
        )?;
        let (audit, audit_writer) =
            crate::audit::AuditLog::start(store.clone(), settings.audit.clone());
        // Its task ends with the state: every create it holds was asked for by a request still
        // waiting for its answer.
        let (creates, _create_writer) = crate::create_queue::CreateQueue::start(store.clone());
        let state = web::Data::new(AppState {
            audit,
            creates,
            store,
            ec2,
            broker: Arc::new(broker),
            keyring: Arc::new(keyring),
            bcrypt: crate::bcrypt_gate::BcryptGate::new(&settings.auth),
            follow_slots: Arc::new(crate::follow::FollowSlots::new(
                settings.api.follow_streams_total,
            )),
            fetch: Arc::new(fetch),
            settings,
        });
        let access_log =
            tracing::enabled!(target: "actix_web::middleware::logger", tracing::Level::INFO);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(max_body))
                .wrap(actix_web::middleware::from_fn(
                    crate::idempotency::idempotency,
                ))
                // The access log formats a line per request: only when it would be written.
                .wrap(actix_web::middleware::Condition::new(
                    access_log,
                    actix_web::middleware::Logger::new("%r %s %Dms").exclude("/healthcheck"),
                ))
                .configure(routes::configure)
        })
        .listen(listener)?
        .disable_signals()
        // Agents and clients hold keep-alive connections; don't let them hold up a stop for long.
        .shutdown_timeout(5)
        .run();
        Ok(Application {
            port,
            server,
            audit_writer,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then stops gracefully.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        tokio::pin!(server);
        let stopped = tokio::select! {
            result = &mut server => result,
            _ = shutdown => {
                // The server future must keep being polled for the stop to complete.
                let (_, result) = tokio::join!(handle.stop(true), server);
                result
            }
        };
        // The audit entries of the last requests, written before the process goes.
        let flushed = tokio::time::timeout(Duration::from_secs(5), self.audit_writer).await;
        if flushed.is_err() {
            tracing::warn!("audit entries still queued at the stop were not kept");
        }
        Ok(stopped?)
    }
}
