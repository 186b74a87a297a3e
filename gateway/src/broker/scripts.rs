//! History on Redis: the server-side scripts that store, number and publish a message in one
//! atomic step, and read a channel's history with its position.
//!
//! Keys of the Redis channel `N` (`<prefix>C`), both in `N`'s hash slot through the tag `{N}`
//! (so a Redis Cluster keeps them on the shard that carries the channel):
//! - `{N}:h`: the messages, a stream with IDs `0-<offset>` and one field `d`. The stream is
//!   also the counter: `XADD ... 0-*` gives the next sequence number, exactly +1 per entry, and a
//!   stream remembers its last ID however far it is trimmed;
//! - `{N}:e`: the epoch.
//!
//! Each publish renews the TTL of both. A new epoch starts when the stream starts again (its
//! first entry: Redis flushed, restarted without persistence, the keys expired or were evicted)
//! or the epoch is gone, so a position of the old epoch no longer recovers. A stream trimmed on
//! its own only shortens what history reaches back to. One exception keeps reads and publishes
//! in agreement: a read of a channel that has no stream yet announces the epoch its first
//! message will carry (stored as `~<epoch>` until then). Backends outside the gateway publish
//! to a channel with history by calling [`PUBLISH`]'s script (see docs/protocol.md); a plain
//! `PUBLISH` there is delivered live, without a position, and is not stored.
//!
//! Redis runs each script call at a fixed cost plus its `redis.call`s, so the publish script
//! makes four in the common case (docs/benchmarks.md has the figures).

use std::sync::{Arc, LazyLock};

use redis::{Pipeline, Script, Value};

use super::BrokerError;
use crate::history::{self, HistoryOptions, Position, Query, Read, Stored};

/// Stores, numbers and publishes one message.
///
/// KEYS: stream, epoch. ARGV: Redis channel, data, history size, TTL seconds, the epoch to
/// start if a new one is needed, and `PUBLISH` or `SPUBLISH`. Returns `{offset, epoch}`.
pub const PUBLISH_LUA: &str = r#"
local epoch = redis.call('GETEX', KEYS[2], 'EX', ARGV[4])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '0-*', 'd', ARGV[2])
local offset = string.sub(id, 3)
if not epoch or offset == '1' or string.byte(epoch) == 126 then
  if offset == '1' and epoch and string.byte(epoch) == 126 then
    epoch = string.sub(epoch, 2)
  else
    epoch = ARGV[5]
  end
  redis.call('SET', KEYS[2], epoch, 'EX', ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call(ARGV[6], ARGV[1], '\1sy-h ' .. offset .. ' ' .. epoch .. ' ' .. ARGV[2])
return {offset, epoch}
"#;

/// Runs a history `read` within the command timeout; any failure (Redis's, the script's
/// answer, the timeout) is an unavailable broker, in the backend's words.
pub(super) async fn read_within(
    read: impl Future<Output = redis::RedisResult<Result<Read, String>>>,
    unavailable: fn(String) -> BrokerError,
) -> Result<Read, BrokerError> {
    match crate::redis_link::bounded(read).await {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(e)) | Err(e) => Err(unavailable(e)),
    }
}

/// Reads a channel's history.
///
/// KEYS: stream, epoch. ARGV: `after` or `latest`, the first stream ID to read (for
/// `after`), the most entries to read, TTL seconds, the epoch to start if the channel has
/// none. Returns `{offset, epoch, oldest entry, entries}`; `latest` entries come newest first.
const READ_LUA: &str = r#"
local epoch = redis.call('GET', KEYS[2])
local offset = '0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then offset = string.sub(info[i + 1], 3) end
  end
  if not epoch or string.byte(epoch) == 126 then
    epoch = ARGV[5]
    redis.call('SET', KEYS[2], epoch, 'EX', ARGV[4])
  end
elseif epoch and string.byte(epoch) == 126 then
  epoch = string.sub(epoch, 2)
else
  epoch = ARGV[5]
  redis.call('SET', KEYS[2], '~' .. epoch, 'EX', ARGV[4])
end
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local entries = {}
-- COUNT 0 answers nil, not an empty list, on Redis 7.0: a read of the position alone reads none.
if offset ~= '0' and tonumber(ARGV[3]) > 0 then
  if ARGV[1] == 'after' then
    entries = redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', ARGV[3])
  else
    entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[3])
  end
end
return {offset, epoch, oldest, entries}
"#;

/// The publish script, hashed once.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_LUA));
static READ: LazyLock<Script> = LazyLock::new(|| Script::new(READ_LUA));

/// The stream and epoch keys of Redis channel `name`.
pub(super) fn keys(name: &str) -> [String; 2] {
    [format!("{{{name}}}:h"), format!("{{{name}}}:e")]
}

/// How a script publishes: `PUBLISH` (one Redis) or `SPUBLISH` (a cluster).
#[derive(Debug, Clone, Copy)]
pub(super) enum Publish {
    /// Plain pub/sub.
    Plain,
    /// Sharded pub/sub.
    Sharded,
}

impl Publish {
    fn command(self) -> &'static str {
        match self {
            Publish::Plain => "PUBLISH",
            Publish::Sharded => "SPUBLISH",
        }
    }
}

/// Adds one message to `pipe`: the publish script for a channel with history, otherwise a
/// plain (S)PUBLISH. `epoch` is the one to start if the channel needs a new one.
pub(super) fn add_publish(
    pipe: &mut Pipeline,
    how: Publish,
    name: &str,
    payload: &[u8],
    history: Option<HistoryOptions>,
    epoch: &str,
) {
    match history {
        None => {
            pipe.cmd(how.command()).arg(name).arg(payload);
        }
        Some(options) => {
            let mut call = PUBLISH.prepare_invoke();
            for key in keys(name) {
                call.key(key);
            }
            call.arg(name)
                .arg(payload)
                .arg(options.size)
                .arg(options.ttl.as_secs().max(1))
                .arg(epoch)
                .arg(how.command());
            pipe.invoke_script(&call);
        }
    }
}

/// A new pipeline for a batch: it loads the publish script first when any message of the
/// batch has history (so a Redis that lost its script cache still runs it), and reports
/// every command's own result.
pub(super) fn pipeline(any_history: bool) -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    if any_history {
        pipe.load_script(&PUBLISH).ignore();
    }
    pipe
}

/// One publish's result, as the pipeline reported it.
pub(super) fn accepted(
    value: Value,
    unavailable: impl Fn(String) -> BrokerError,
) -> Result<Option<Position>, BrokerError> {
    match value {
        Value::ServerError(e) => Err(unavailable(format!("{e:?}"))),
        Value::Array(fields) => match fields.as_slice() {
            [offset, epoch] => Ok(Some(Position {
                offset: number(offset).ok_or_else(|| unavailable("bad offset".into()))?,
                epoch: text(epoch).ok_or_else(|| unavailable("bad epoch".into()))?,
            })),
            _ => Err(unavailable("unexpected publish script reply".into())),
        },
        _ => Ok(None),
    }
}

/// Reads `name`'s history through `con`.
pub(super) async fn read(
    con: &mut impl redis::aio::ConnectionLike,
    name: &str,
    query: Query,
    limit: usize,
    options: HistoryOptions,
) -> redis::RedisResult<Result<Read, String>> {
    let (kind, start) = match query {
        Query::After(after) => ("after", format!("0-{}", after.saturating_add(1))),
        Query::Latest => ("latest", "-".to_owned()),
    };
    let mut call = READ.prepare_invoke();
    for key in keys(name) {
        call.key(key);
    }
    call.arg(kind)
        .arg(start)
        .arg(limit)
        .arg(options.ttl.as_secs().max(1))
        .arg(&*history::new_epoch());
    let reply: Value = call.invoke_async(con).await?;
    Ok(parse_read(reply, query))
}

fn parse_read(reply: Value, query: Query) -> Result<Read, String> {
    let Value::Array(fields) = reply else {
        return Err("unexpected history script reply".into());
    };
    let [offset, epoch, oldest, entries] = fields.as_slice() else {
        return Err("unexpected history script reply".into());
    };
    let position = Position {
        offset: number(offset).ok_or("bad offset")?,
        epoch: text(epoch).ok_or("bad epoch")?,
    };
    let first = match entry_list(oldest)?.first() {
        Some(m) => m.offset,
        None => position.offset + 1,
    };
    let mut messages = entry_list(entries)?;
    if query == Query::Latest {
        messages.reverse();
    }
    Ok(Read {
        messages,
        position,
        first,
    })
}

fn entry_list(v: &Value) -> Result<Vec<Stored>, String> {
    let Value::Array(entries) = v else {
        return Err("stream entries are not a list".into());
    };
    entries.iter().map(entry).collect()
}

/// One stream entry: `[id, [d, data]]`.
fn entry(v: &Value) -> Result<Stored, String> {
    let bad = || "malformed stream entry".to_owned();
    let Value::Array(parts) = v else {
        return Err(bad());
    };
    let [id, fields] = parts.as_slice() else {
        return Err(bad());
    };
    let offset = text(id)
        .and_then(|id| id.split_once('-').and_then(|(_, o)| o.parse().ok()))
        .ok_or_else(bad)?;
    let data = match fields {
        Value::Array(kv) => match kv.as_slice() {
            [_, Value::BulkString(data)] => data.clone(),
            _ => return Err(bad()),
        },
        Value::Map(kv) => match kv.as_slice() {
            [(_, Value::BulkString(data))] => data.clone(),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    Ok(Stored {
        offset,
        data: data.into(),
    })
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<Arc<str>> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(Arc::from),
        Value::SimpleString(s) => Some(s.as_str().into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn stream_entry(offset: u64, data: &str) -> Value {
        Value::Array(vec![
            bulk(&format!("0-{offset}")),
            Value::Array(vec![bulk("d"), bulk(data)]),
        ])
    }

    #[test]
    fn the_script_publishes_the_envelope_the_gateway_opens() {
        // Lua's `\1` is the byte 1: the script's prefix is history::ENVELOPE.
        assert!(PUBLISH_LUA.contains(r"'\1sy-h '"));
        assert_eq!(history::ENVELOPE, b"\x01sy-h ");
    }

    #[test]
    fn keys_share_the_channels_hash_tag() {
        assert_eq!(keys("sy:chat"), ["{sy:chat}:h", "{sy:chat}:e"]);
    }

    #[test]
    fn a_read_reply_becomes_messages_and_a_position() {
        let reply = Value::Array(vec![
            bulk("7"),
            bulk("ep"),
            Value::Array(vec![stream_entry(5, "5")]),
            Value::Array(vec![stream_entry(7, "7"), stream_entry(6, "6")]),
        ]);
        let read = parse_read(reply, Query::Latest).unwrap();
        assert_eq!(read.position.offset, 7);
        assert_eq!(&*read.position.epoch, "ep");
        assert_eq!(read.first, 5);
        let offsets: Vec<u64> = read.messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [6, 7], "latest come back oldest first");
        let empty = Value::Array(vec![
            Value::Int(0),
            bulk("ep"),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]);
        assert_eq!(parse_read(empty, Query::After(0)).unwrap().first, 1);
    }

    #[test]
    fn publish_results_are_positions_errors_or_nothing() {
        let unavailable = |e: String| BrokerError::Unavailable(e);
        let at = accepted(Value::Array(vec![Value::Int(3), bulk("e")]), unavailable).unwrap();
        assert_eq!(at.map(|p| p.offset), Some(3));
        assert!(accepted(Value::Int(2), unavailable).unwrap().is_none());
    }
}
