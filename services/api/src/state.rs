//! What every request handler can reach.

use std::sync::Arc;

use spot_shared::auth::Keyring;
use spot_shared::broker::Broker;
use spot_shared::config::Settings;
use spot_shared::store::Store;

pub struct AppState {
    pub store: Store,
    pub ec2: spot_shared::instance_power::Ec2,
    pub broker: Arc<Broker>,
    pub keyring: Arc<Keyring>,
    pub bcrypt: crate::bcrypt_gate::BcryptGate,
    pub follow_slots: Arc<crate::follow::FollowSlots>,
    /// What agents are told about fetching files named by URL (`[fetch]`, CA file read once).
    pub fetch: Arc<spot_shared::file_source::FetchSpec>,
    /// Where state-changing requests are recorded (`GET /v1/audit`).
    pub audit: crate::audit::AuditLog,
    /// Where creates go to be saved together ([`crate::create_queue`]).
    pub creates: crate::create_queue::CreateQueue,
    pub settings: Settings,
}
