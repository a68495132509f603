//! An account's group indexes, kept only once the account has used two groups.
//!
//! `p:account:{a}:jobs` lists every job of the account by creation time: listings page it and the
//! job quota counts it. Listing one group pages `p:account:{a}:group:{g}:jobs`. Most accounts use
//! one group (the default, or a compatibility surface's), and for them the group's index repeats
//! the account's at 144 bytes a job, a fifth of a pending job's memory and a `ZADD` of every
//! create. So `p:account:{a}:one_group` says which of these an account is in:
//!
//! | `one_group` | the account | group `g` is listed from |
//! |---|---|---|
//! | absent, no jobs | new (`E`) | (nothing to list) |
//! | `S:g` | every job in group `g`, no group index (`S`) | the account's index |
//! | `B:g` | as `S`, while `g`'s index is built (`g`'s jobs go in both) | the account's index |
//! | `M:`, or absent with jobs (stored before) | a job of each group in its group's index (`M`) | `g`'s index |
//!
//! An account only moves on: `E` to `S` (or to `M` when its first jobs come in several groups), `S`
//! to `B` to `M`. The first job of a second group waits for the split: a small account is split in
//! the script that meets it; a large one by [`Store::split_account_groups`], a few thousand entries
//! a step, because copying a million entries at once holds Redis for half a second.
//!
//! While an account is in `B`, every job of `g` is in both indexes or in neither once added or
//! removed, and the builder copies the account's index in rank order; a removal behind its cursor
//! shifts the ranks, so the build ends only when both indexes hold as many entries (the group's is
//! a subset of the account's throughout), else it makes another pass.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::Store;
use crate::error::Result;

/// Lua the scripts that index jobs share: reading an account's state, and splitting it at once.
/// Group index keys are built from the account's index key (`…:jobs` to `…:group:{g}:jobs`, as
/// [`Store::index_key`] names them): the one group's name is only known inside.
pub(super) const ACCOUNT_GROUPS_LUA: &str = r#"
-- 'E', 'S', 'B' or 'M', and the one group ('S', 'B').
local function groups_state(one, all)
  local value = redis.call('GET', one)
  if not value then
    if redis.call('EXISTS', all) == 1 then return 'M', nil end
    return 'E', nil
  end
  return string.sub(value, 1, 1), string.sub(value, 3)
end
local function group_index(all, group)
  return string.sub(all, 1, -5) .. 'group:' .. group .. ':jobs'
end
-- The one group's index made whole from the account's (which holds only its jobs), and the
-- account mixed from then on.
local function split_now(one, all, group)
  redis.call('COPY', all, group_index(all, group), 'REPLACE')
  redis.call('SET', one, 'M:')
  redis.call('DEL', one .. ':cursor')
end
"#;

/// Accounts this large or smaller are split inside the script that meets their second group.
pub(super) const SPLIT_AT_ONCE_MAX: u64 = 10_000;

/// Entries a step of [`Store::split_account_groups`] copies.
const SPLIT_STEP_ENTRIES: usize = 5_000;

/// Passes the builder makes before it copies what is left at once (a build that removals keep
/// undoing must still end).
const SPLIT_PASSES: u32 = 4;

/// Indexes jobs of one account and one group (in a transaction: `EVAL` with the source, as for
/// [`super::timers::arm_many`]), splitting the account first if it holds another group (the
/// caller splits a large one beforehand, [`Store::prepare_groups`]; only a create racing it is
/// split here whatever its size). KEYS: the account's index, `one_group`, the group's index.
/// ARGV: the group, then score, id pairs.
static INDEX_JOBS: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"{ACCOUNT_GROUPS_LUA}
local kind, one_group = groups_state(KEYS[2], KEYS[1])
local group = ARGV[1]
if kind == 'E' then
  redis.call('SET', KEYS[2], 'S:' .. group)
  kind = 'S'
elseif kind ~= 'M' and one_group ~= group then
  split_now(KEYS[2], KEYS[1], one_group)
  kind = 'M'
end
redis.call('ZADD', KEYS[1], unpack(ARGV, 2))
if kind ~= 'S' then redis.call('ZADD', KEYS[3], unpack(ARGV, 2)) end
"#
    )
});

/// A page of one group's job ids, newest first, from wherever the account keeps them. KEYS: the
/// account's index, `one_group`, the group's index. ARGV: the group, start, stop.
static LIST_GROUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{ACCOUNT_GROUPS_LUA}
local kind, one_group = groups_state(KEYS[2], KEYS[1])
local index = KEYS[3]
if (kind == 'S' or kind == 'B') and one_group == ARGV[1] then index = KEYS[1] end
return redis.call('ZRANGE', index, ARGV[2], ARGV[3], 'REV')
"#
    ))
});

/// A step of the split: `S` becomes `B`, the next entries are copied, and once the cursor passes
/// the end with both indexes the same size the account is `M`. Returns 1 when the account needs
/// nothing more (also for `E` and `M`), 0 when another step is due. KEYS: `one_group`, the
/// account's index, the cursor. ARGV: entries a step, passes before copying the rest at once.
static SPLIT_STEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{ACCOUNT_GROUPS_LUA}
local kind, one_group = groups_state(KEYS[1], KEYS[2])
if kind == 'E' or kind == 'M' then return 1 end
if kind == 'S' then
  redis.call('SET', KEYS[1], 'B:' .. one_group)
  redis.call('DEL', KEYS[3])
end
local dest = group_index(KEYS[2], one_group)
local cursor = redis.call('HMGET', KEYS[3], 'at', 'pass')
local from, pass = tonumber(cursor[1] or '0'), tonumber(cursor[2] or '0')
local step = tonumber(ARGV[1])
if pass >= tonumber(ARGV[2]) then
  split_now(KEYS[1], KEYS[2], one_group)
  return 1
end
local entries = redis.call('ZRANGE', KEYS[2], from, from + step - 1, 'WITHSCORES')
-- A thousand pairs a ZADD, within what Lua's unpack takes.
for first = 1, #entries, 2000 do
  local scored = {{}}
  for i = first, math.min(first + 1998, #entries - 1), 2 do
    scored[#scored + 1] = entries[i + 1]
    scored[#scored + 1] = entries[i]
  end
  redis.call('ZADD', dest, unpack(scored))
end
if #entries == 2 * step then
  redis.call('HSET', KEYS[3], 'at', from + step)
  return 0
end
if redis.call('ZCARD', dest) == redis.call('ZCARD', KEYS[2]) then
  redis.call('SET', KEYS[1], 'M:')
  redis.call('DEL', KEYS[3])
  return 1
end
redis.call('HSET', KEYS[3], 'at', 0, 'pass', pass + 1)
return 0
"#
    ))
});

impl Store {
    /// The key saying how `account` keeps its group indexes (see the module's doc).
    pub(super) fn one_group_key(&self, account: &str) -> String {
        self.key(&format!("account:{account}:one_group"))
    }

    /// Adds to `pipe` the indexing of jobs (score, id) of `account` in `group`: see [`INDEX_JOBS`].
    pub(super) fn index_jobs(
        &self,
        pipe: &mut redis::Pipeline,
        account: &str,
        group: &str,
        entries: &[(i64, &str)],
    ) {
        for chunk in entries.chunks(super::scripts::PAIRS_PER_CALL) {
            let cmd = pipe
                .cmd("EVAL")
                .arg(INDEX_JOBS.as_str())
                .arg(3)
                .arg(self.index_key(account, None))
                .arg(self.one_group_key(account))
                .arg(self.index_key(account, Some(group)))
                .arg(group);
            for (score, id) in chunk {
                cmd.arg(score).arg(id);
            }
            cmd.ignore();
        }
    }

    /// Before jobs of `groups` are indexed in a transaction: splits `account` if it keeps a single
    /// other group, in steps, so that the transaction never copies a large index at once.
    pub(super) async fn prepare_groups(&self, account: &str, groups: &[&str]) -> Result<()> {
        let mut conn = self.conn.clone();
        let state: Option<String> = conn.get(self.one_group_key(account)).await?;
        let one_group = state
            .as_deref()
            .filter(|state| state.starts_with("S:") || state.starts_with("B:"))
            .map(|state| &state[2..]);
        match one_group {
            Some(one) if groups.iter().any(|group| *group != one) => {
                self.split_account_groups(account).await
            }
            _ => Ok(()),
        }
    }

    /// Gives every group of `account` its own index (the account moves to `M`), a step at a time.
    /// Safe to run from several processes at once, and to resume after a crash.
    pub async fn split_account_groups(&self, account: &str) -> Result<()> {
        let one = self.one_group_key(account);
        loop {
            let mut conn = self.conn.clone();
            let done: i64 = SPLIT_STEP
                .key(&one)
                .key(self.index_key(account, None))
                .key(format!("{one}:cursor"))
                .arg(SPLIT_STEP_ENTRIES)
                .arg(SPLIT_PASSES)
                .invoke_async(&mut conn)
                .await?;
            if done == 1 {
                tracing::info!(account, "the account's groups have their own indexes");
                return Ok(());
            }
        }
    }

    /// Job ids of one group of `account`, newest first, ranks `start` to `stop` (-1: the last).
    pub(super) async fn list_group_ids(
        &self,
        account: &str,
        group: &str,
        start: isize,
        stop: isize,
    ) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        Ok(LIST_GROUP
            .key(self.index_key(account, None))
            .key(self.one_group_key(account))
            .key(self.index_key(account, Some(group)))
            .arg(group)
            .arg(start)
            .arg(stop)
            .invoke_async(&mut conn)
            .await?)
    }

    /// The account's index of its jobs, or of one group's.
    pub(super) fn index_key(&self, account: &str, group: Option<&str>) -> String {
        match group {
            Some(group) => self.key(&format!("account:{account}:group:{group}:jobs")),
            None => self.key(&format!("account:{account}:jobs")),
        }
    }
}
