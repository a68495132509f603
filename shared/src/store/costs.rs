//! What terminated instances cost, summed once each: on the instance and its run, per day (for
//! `/v1/usage`), per account and month (for budgets), per account and market (for `/metrics`), and
//! the overhead around each job (boot, exit to terminate call, terminate call to terminated).
//!
//! Keys, under the prefix `p` (fields joined by `\x1f`, which no account, group or job id holds):
//! - `p:usage:day:{YYYY-MM-DD}`: `{account} {group} {job} nano_usd|secs|runs` (kept 400 days)
//! - `p:usage:month:{YYYY-MM}`: `{account}` → nano-dollars (kept 400 days)
//! - `p:metrics:cost`: `{account} {market} nano_usd|secs`
//! - `p:metrics:overhead`: `{phase} sum_ms|count`
//! - `p:job:{id}:cost_nano_usd` (in the job's shard): what the job's kept runs cost, so that
//!   `GET /v1/jobs/{id}` reads one number, not every kept run (made from the runs when first asked)

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use redis::{AsyncCommands, Script};

use super::Store;
use crate::error::Result;
use crate::model::Job;

/// Joins the parts of a counter's field.
pub const SEP: char = '\u{1f}';

/// How long the daily and monthly usage counters are kept.
const USAGE_TTL_SECS: i64 = 400 * 86_400;

/// One terminated instance's cost, to be summed.
#[derive(Debug, Clone, PartialEq)]
pub struct CostRecord {
    pub instance_id: String,
    pub run_id: String,
    pub account: String,
    pub group: String,
    pub job_id: String,
    pub market: String,
    pub terminated_at: DateTime<Utc>,
    pub billed_secs: u64,
    pub nano_usd: u64,
    pub leaked_secs: u64,
    /// `(phase, milliseconds)` for the phases the records show.
    pub overheads: Vec<(&'static str, u64)>,
}

/// Sums a cost once: the instance's `billed_secs` field is the mark that it was.
/// KEYS: instance, day, month, metrics cost, metrics overhead. ARGV: billed secs, nano-dollars,
/// leaked secs, day field prefix, account, cost field prefix, ttl, then phase/ms pairs.
const ACCOUNT_COST: &str = r#"
if redis.call('HSETNX', KEYS[1], 'billed_secs', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cost_nano_usd', ARGV[2], 'leaked_secs', ARGV[3])
local sep = '\31'
redis.call('HINCRBY', KEYS[2], ARGV[4] .. sep .. 'nano_usd', ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[4] .. sep .. 'secs', ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[4] .. sep .. 'runs', 1)
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('HINCRBY', KEYS[3], ARGV[5], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('HINCRBY', KEYS[4], ARGV[6] .. sep .. 'nano_usd', ARGV[2])
redis.call('HINCRBY', KEYS[4], ARGV[6] .. sep .. 'secs', ARGV[1])
for i = 8, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[5], ARGV[i] .. sep .. 'sum_ms', ARGV[i + 1])
  redis.call('HINCRBY', KEYS[5], ARGV[i] .. sep .. 'count', 1)
end
return 1
"#;

/// A job's total over its kept runs, summed from them: for a job that has no total yet (created,
/// or costed, before totals were kept). Run keys are built from the shard's prefix (their ids are
/// only known inside).
const KEPT_COST_LUA: &str = r#"
local function kept_cost(runs, prefix)
  local total = 0
  for _, id in ipairs(redis.call('ZRANGE', runs, 0, -1)) do
    total = total + (tonumber(redis.call('HGET', prefix .. ':run:' .. id, 'cost_nano_usd')) or 0)
  end
  return total
end
"#;

/// The run's copy of its instance's cost (the run is in its job's shard, the instance is not, so
/// this is a step of its own, after the sum; asked again it changes nothing), added to its job's
/// total over kept runs (made first from the kept runs if the job has none; none for a job that
/// deleted itself, whose runs expire). KEYS[1] the run,
/// KEYS[2] the job's runs, KEYS[3] the job's total; ARGV[1] nano-dollars, ARGV[2] the shard's key
/// prefix.
const RUN_COST: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'cost_nano_usd', ARGV[1]) == 0 then return 0 end
-- The runs of a job that deleted itself are only kept a while: the job has no total to keep.
if redis.call('TTL', KEYS[2]) ~= -1 then return 1 end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('INCRBY', KEYS[3], ARGV[1])
else
  redis.call('SET', KEYS[3], kept_cost(KEYS[2], ARGV[2]))
end
return 1
"#;

/// A job's total, made from its kept runs the first time it is asked for (in one script, so that
/// no cost recorded or run trimmed meanwhile is missed or counted twice). KEYS[1] the job, KEYS[2]
/// its runs, KEYS[3] its total; ARGV[1] the shard's key prefix. A job deleted meanwhile gets none.
const JOB_COST: &str = r#"
local total = redis.call('GET', KEYS[3])
if total then return tonumber(total) end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
total = kept_cost(KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], total)
return total
"#;

static ACCOUNT_COST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACCOUNT_COST));
static RUN_COST_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{KEPT_COST_LUA}{RUN_COST}")));
static JOB_COST_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{KEPT_COST_LUA}{JOB_COST}")));

/// Usage summed over some days, for one account, group and job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub account: String,
    pub group: String,
    pub job_id: String,
    pub nano_usd: u64,
    pub secs: u64,
    pub runs: u64,
}

/// A job's cost total over its kept runs (in the job's shard; the trim script takes a trimmed
/// run's cost off it, by this name).
pub(super) fn job_cost_key(job_id: &str) -> String {
    format!("job:{job_id}:cost_nano_usd")
}

fn day_key(day: NaiveDate) -> String {
    format!("usage:day:{}", day.format("%Y-%m-%d"))
}

fn month_key(at: NaiveDate) -> String {
    format!("usage:month:{}", at.format("%Y-%m"))
}

impl Store {
    /// Sums a terminated instance's cost, once however often it is asked. Returns whether it was
    /// summed now.
    pub async fn account_cost(&self, record: &CostRecord) -> Result<bool> {
        let day = record.terminated_at.date_naive();
        let mut invocation = ACCOUNT_COST_SCRIPT.prepare_invoke();
        invocation
            .key(self.key(&format!("instance:{}", record.instance_id)))
            .key(self.key(&day_key(day)))
            .key(self.key(&month_key(day)))
            .key(self.key("metrics:cost"))
            .key(self.key("metrics:overhead"))
            .arg(record.billed_secs)
            .arg(record.nano_usd)
            .arg(record.leaked_secs)
            .arg(format!(
                "{}{SEP}{}{SEP}{}",
                record.account, record.group, record.job_id
            ))
            .arg(&record.account)
            .arg(format!("{}{SEP}{}", record.account, record.market))
            .arg(USAGE_TTL_SECS);
        for (phase, ms) in &record.overheads {
            invocation.arg(*phase).arg(*ms);
        }
        let mut conn = self.conn.clone();
        let summed: i64 = invocation.invoke_async(&mut conn).await?;
        // Written whether or not this call summed it, so that a call that summed and then failed
        // here is mended when asked again; a crash in between leaves only the run's copy missing
        // (the instance, the usage and the budgets have it).
        let job = &record.job_id;
        let _: i64 = RUN_COST_SCRIPT
            .key(self.owned_key(&record.run_id, &format!("run:{}", record.run_id)))
            .key(self.owned_key(job, &format!("job:{job}:runs")))
            .key(self.owned_key(job, &job_cost_key(job)))
            .arg(record.nano_usd)
            .arg(self.shards.prefix(self.shards.of(job)))
            .invoke_async(&mut conn)
            .await?;
        Ok(summed == 1)
    }

    /// What a job's kept runs' instances cost, in USD: one read of its total, kept up as costs
    /// arrive and runs are trimmed (made from its kept runs the first time).
    pub async fn job_cost_usd(&self, job: &Job) -> Result<f64> {
        let id = &job.id;
        let mut conn = self.conn.clone();
        let total: u64 = JOB_COST_SCRIPT
            .key(self.owned_key(id, &format!("job:{id}")))
            .key(self.owned_key(id, &format!("job:{id}:runs")))
            .key(self.owned_key(id, &job_cost_key(id)))
            .arg(self.shards.prefix(self.shards.of(id)))
            .invoke_async(&mut conn)
            .await?;
        Ok(crate::pricing::usd(total))
    }

    /// What an account's instances cost in the month `at` falls in, in nano-dollars.
    pub async fn month_spend(&self, account: &str, at: DateTime<Utc>) -> Result<u64> {
        let mut conn = self.conn.clone();
        let spent: Option<u64> = conn
            .hget(self.key(&month_key(at.date_naive())), account)
            .await?;
        Ok(spent.unwrap_or(0))
    }

    /// Usage from `from` to `to` (days, inclusive), summed per account, group and job; only
    /// `account`'s when given.
    pub async fn usage(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        account: Option<&str>,
    ) -> Result<Vec<UsageRow>> {
        let days: Vec<NaiveDate> = from.iter_days().take_while(|day| *day <= to).collect();
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for day in &days {
            pipe.hgetall(self.key(&day_key(*day)));
        }
        let mut conn = self.conn.clone();
        let maps: Vec<BTreeMap<String, u64>> = pipe.query_async(&mut conn).await?;
        let mut rows: BTreeMap<(String, String, String), UsageRow> = BTreeMap::new();
        for (field, value) in maps.into_iter().flatten() {
            let parts: Vec<&str> = field.split(SEP).collect();
            let [owner, group, job, what] = parts.as_slice() else {
                continue;
            };
            if account.is_some_and(|wanted| wanted != *owner) {
                continue;
            }
            let row = rows
                .entry((owner.to_string(), group.to_string(), job.to_string()))
                .or_insert_with(|| UsageRow {
                    account: owner.to_string(),
                    group: group.to_string(),
                    job_id: job.to_string(),
                    ..UsageRow::default()
                });
            match *what {
                "nano_usd" => row.nano_usd += value,
                "secs" => row.secs += value,
                "runs" => row.runs += value,
                _ => {}
            }
        }
        Ok(rows.into_values().collect())
    }

    /// Cost and instance-seconds by account and market: `((account, market), (nano_usd, secs))`.
    pub async fn cost_counters(&self) -> Result<BTreeMap<(String, String), (u64, u64)>> {
        let mut conn = self.conn.clone();
        let fields: BTreeMap<String, u64> = conn.hgetall(self.key("metrics:cost")).await?;
        let mut counters: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for (field, value) in fields {
            let parts: Vec<&str> = field.split(SEP).collect();
            let [account, market, what] = parts.as_slice() else {
                continue;
            };
            let entry = counters
                .entry((account.to_string(), market.to_string()))
                .or_default();
            match *what {
                "nano_usd" => entry.0 += value,
                "secs" => entry.1 += value,
                _ => {}
            }
        }
        Ok(counters)
    }

    /// The overhead phases: `phase → (sum in ms, count)`.
    pub async fn overheads(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let mut conn = self.conn.clone();
        let fields: BTreeMap<String, u64> = conn.hgetall(self.key("metrics:overhead")).await?;
        let mut phases: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (field, value) in fields {
            let Some((phase, what)) = field.split_once(SEP) else {
                continue;
            };
            let entry = phases.entry(phase.to_string()).or_default();
            match what {
                "sum_ms" => entry.0 += value,
                "count" => entry.1 += value,
                _ => {}
            }
        }
        Ok(phases)
    }
}
