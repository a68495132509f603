//! The domain: jobs, their runs and the instances runs use, with the state machines that say which
//! moves are legal. Every surface of the api and every service speaks these types. One file per
//! aggregate: [`job`] (with its [`policies`] and [`runner`]), [`run`], [`instance`].

mod audit;
mod instance;
mod job;
mod notify;
mod overrides;
mod policies;
mod run;
mod runner;

pub use crate::container_limits::ContainerLimits;
pub use audit::{diff as audit_diff, AuditEntry, Change};
pub use instance::{Instance, InstanceState, PriceSource};
pub use job::{whole_millis, Job, Pause, Tag, DEFAULT_GROUP, DEFAULT_TIME_ZONE};
pub use notify::{AttemptOutcome, NotificationAttempt, NotifyEvent, NotifyFormat, NotifyTarget};
pub use overrides::RunOverrides;
pub use policies::{CatchUp, Concurrency, OnLastRun, Policies, RetryPolicy, RetryReason};
pub use run::{ArrayPart, Run, RunState};
pub use runner::{
    limits, ContainerSpec, DummySpec, FileSpec, HttpSpec, InstanceSpec, PowerAction, Runner,
    DEFAULT_STOP_GRACE_SECS, MAX_SPOT_STOP_GRACE_SECS, STOP_SIGNALS,
};

#[cfg(test)]
mod tests;
