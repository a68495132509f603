//! Instances: their records (a hash each, state moved by compare-and-set), the live set, and the
//! launch intents that keep a lost launch answer from launching twice.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};

use super::{optional, parse_time, required, transitions, Moved, Store, CAS_STATE_SCRIPT};
use crate::error::Result;
use crate::model::{Instance, InstanceState};

/// Creates a hash only if it does not exist. KEYS[1] hash, KEYS[2] a set to add ARGV[1] to; ARGV[2..] pairs.
const CREATE_HASH: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"#;

static CREATE_HASH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CREATE_HASH));

impl Store {
    /// Records that a launch of the run's attempt is about to call the cloud, and when. Kept a day:
    /// long past any listing delay.
    pub async fn mark_launch_intent(&self, run_id: &str, attempt: u32) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set_ex(
                self.key(&format!("launch-intent:{run_id}:{attempt}")),
                Utc::now().to_rfc3339(),
                86_400,
            )
            .await?;
        Ok(())
    }

    /// When a launch of the run's attempt last called the cloud without learning what came of it.
    pub async fn launch_intent(&self, run_id: &str, attempt: u32) -> Result<Option<DateTime<Utc>>> {
        let mut conn = self.conn.clone();
        let at: Option<String> = conn
            .get(self.key(&format!("launch-intent:{run_id}:{attempt}")))
            .await?;
        Ok(at.and_then(|at| parse_time(&at).ok()))
    }

    /// Forgets the intent: the launch's outcome is known.
    pub async fn clear_launch_intent(&self, run_id: &str, attempt: u32) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .del(self.key(&format!("launch-intent:{run_id}:{attempt}")))
            .await?;
        Ok(())
    }

    /// The ids of every instance not yet terminated.
    pub async fn live_instance_ids(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.smembers(self.key("instances:live")).await?)
    }

    // ----- instances -----

    /// Creates an instance record unless one with that id exists. Returns whether it was created.
    pub async fn create_instance(&self, instance: &Instance) -> Result<bool> {
        let mut conn = self.conn.clone();
        let mut script = CREATE_HASH_SCRIPT.prepare_invoke();
        script
            .key(self.key(&format!("instance:{}", instance.id)))
            .key(self.key("instances:live"))
            .arg(&instance.id);
        for (field, value) in instance_to_hash(instance) {
            script.arg(field).arg(value);
        }
        let created: i64 = script.invoke_async(&mut conn).await?;
        Ok(created == 1)
    }

    pub async fn get_instance(&self, id: &str) -> Result<Option<Instance>> {
        if !crate::ids::is_id(id) {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let map: BTreeMap<String, String> =
            conn.hgetall(self.key(&format!("instance:{id}"))).await?;
        if map.is_empty() {
            return Ok(None);
        }
        instance_from_hash(&map).map(Some)
    }

    pub async fn advance_instance(
        &self,
        id: &str,
        to: InstanceState,
        fields: &[(&str, String)],
    ) -> Result<Moved<InstanceState>> {
        let key = self.key(&format!("instance:{id}"));
        let moved = self
            .advance_hash(&CAS_STATE_SCRIPT, &[key], &[], "instance", id, to, fields)
            .await?;
        if to == InstanceState::Terminated {
            let mut conn = self.conn.clone();
            let _: () = conn.srem(self.key("instances:live"), id).await?;
        }
        Ok(moved)
    }

    pub async fn set_instance_fields(&self, id: &str, fields: &[(&str, String)]) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset_multiple(self.key(&format!("instance:{id}")), fields)
            .await?;
        Ok(())
    }
}

fn instance_to_hash(instance: &Instance) -> Vec<(String, String)> {
    let mut fields = vec![
        ("id".to_string(), instance.id.clone()),
        ("run_id".to_string(), instance.run_id.clone()),
        ("provider".to_string(), instance.provider.clone()),
        ("state".to_string(), instance.state.to_string()),
        ("ready".to_string(), u8::from(instance.ready).to_string()),
    ];
    let optionals = [
        ("instance_type", &instance.instance_type),
        ("dns_name", &instance.dns_name),
        ("ip_address", &instance.ip_address),
        ("lifecycle", &instance.lifecycle),
        ("zone", &instance.zone),
    ];
    for (field, value) in optionals {
        if let Some(value) = value {
            fields.push((field.to_string(), value.clone()));
        }
    }
    if let Some(price) = instance.usd_per_hour {
        fields.push(("usd_per_hour".to_string(), price.to_string()));
    }
    if let Some(source) = instance.price_source {
        fields.push(("price_source".to_string(), source.as_str().to_string()));
    }
    for (state, at) in &instance.transitions {
        fields.push((format!("t:{state}"), at.to_rfc3339()));
    }
    fields
}

fn instance_from_hash(map: &BTreeMap<String, String>) -> Result<Instance> {
    Ok(Instance {
        id: required(map, "id")?.clone(),
        run_id: required(map, "run_id")?.clone(),
        provider: required(map, "provider")?.clone(),
        state: required(map, "state")?.parse()?,
        instance_type: optional(map, "instance_type"),
        dns_name: optional(map, "dns_name"),
        ip_address: optional(map, "ip_address"),
        lifecycle: optional(map, "lifecycle"),
        ready: map.get("ready").map(|v| v == "1").unwrap_or(false),
        transitions: transitions(map),
        zone: optional(map, "zone"),
        usd_per_hour: parsed(map, "usd_per_hour"),
        price_source: map
            .get("price_source")
            .and_then(|v| crate::pricing::PriceSource::parse(v)),
        billed_secs: parsed(map, "billed_secs"),
        cost_nano_usd: parsed(map, "cost_nano_usd"),
        leaked_secs: parsed(map, "leaked_secs"),
    })
}

fn parsed<T: std::str::FromStr>(map: &BTreeMap<String, String>, field: &str) -> Option<T> {
    map.get(field).and_then(|v| v.parse().ok())
}
