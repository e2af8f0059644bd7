//! JetStream mode: the relay's side of one stream that every relay shares.
//!
//! - The stream (`upstream.stream`, subjects `{prefix}>`) is created if
//!   missing. Its identity (name and creation time) is the epoch of every
//!   relay reading it ([`stream_epoch`]).
//! - One ordered push consumer reads it into the sequencer, each event with
//!   its stream sequence as its `seq`. When the epoch becomes known, the
//!   consumer starts far enough back to fill the history (the events up to
//!   the stream's last sequence then go into the history only, never
//!   delivered live), so a relay that just started answers resumes at once.
//! - Whenever the consumer fails (NATS restarted, heartbeats missed, the
//!   connection came back, interest changed), it is created again from the
//!   last sequence this relay took, plus one: nothing is missed and nothing
//!   is taken twice. If the stream no longer holds the events after it, the
//!   relay makes a cut (`Sequencer::cut`): resumes across it are refused
//!   and subscribers told.
//! - Last values: when the epoch becomes known, the last message of each
//!   subject matching `history.last_value` is read (a `last_per_subject`
//!   consumer per pattern, at most `history.max_channels` messages), so a
//!   relay with a cold cache answers snapshots and REST reads.
//! - Interest: with NATS 2.10 or later (`filter_subjects`), the consumer
//!   reads only the subjects clients hold and those of `history.last_value`;
//!   the history records what it received (`Sequencer::cover`). Before
//!   2.10, it reads the whole stream and the reactors deliver what their
//!   clients hold.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType, Stream};
use async_nats::jetstream::{self, Context};
use async_nats::Client;
use futures::StreamExt;
use tracing::{info, warn};

use super::link::{FetchAnswer, FetchRequest, Fetched, UpstreamLink};
use super::wire;
use super::UpstreamConfig;
use crate::config::HistoryConfig;
use crate::fanout::event::EncodedEvent;
use crate::fanout::history::stream_epoch;
use crate::fanout::history::Gap;
use crate::fanout::sequencer::{AppendError, Sequencer};
use crate::route::SubjectLimits;
use crate::stats::PatternCounts;

/// Most messages handed to the sequencer at once.
const DELIVER_BATCH: usize = 1024;
/// How long the consumer waits before retrying a full sequencer.
const SEQUENCER_RETRY: Duration = Duration::from_millis(1);
/// The longest a read of last values at start may take.
const LAST_VALUES_WAIT: Duration = Duration::from_secs(5);

/// What the consuming task works with.
pub(super) struct Reader {
    pub client: Client,
    pub js: Context,
    pub sequencer: Arc<Sequencer>,
    pub link: Arc<UpstreamLink>,
    pub patterns: Arc<PatternCounts>,
    pub config: UpstreamConfig,
    pub history: HistoryConfig,
    pub limits: SubjectLimits,
}

/// Where the relay is in the stream, kept across consumers.
#[derive(Default)]
struct Position {
    /// The epoch of the stream read so far.
    epoch: Option<String>,
    /// The last stream sequence taken (delivered, backfilled or skipped).
    last: u64,
    /// Events up to this seq go into the history only (the backfill);
    /// `backfill_from` is where it began.
    backfill_to: u64,
    backfill_from: u64,
    /// The subjects filter the consumer reads (`None`: the whole stream).
    filter: Option<Vec<Box<str>>>,
    /// After a filter change: events up to this seq are taken only if the
    /// previous filter (`before`) matched them too. A consumer created with
    /// a new pattern starts from this relay's last sequence; what it finds
    /// there for the new pattern is older than the interest, and is not
    /// delivered as if it were new.
    widened_until: u64,
    before: Option<Vec<Box<str>>>,
}

/// Why a consumer stopped.
enum Stopped {
    /// Recreate it at once (interest changed, connection came back).
    Recreate,
    /// The relay is stopping.
    Closed,
}

/// The stream's configuration when the relay creates it.
pub(super) fn stream_config(config: &UpstreamConfig) -> StreamConfig {
    StreamConfig {
        name: config.stream.clone(),
        subjects: vec![wire::subject(&config.subject_prefix, ">")],
        max_messages: config.stream_max_messages,
        max_bytes: config.stream_max_bytes,
        max_age: config.stream_max_age,
        num_replicas: config.stream_replicas,
        storage: if config.stream_memory {
            StorageType::Memory
        } else {
            StorageType::File
        },
        ..StreamConfig::default()
    }
}

/// Reads the stream into the sequencer until the relay stops, recreating
/// the consumer whenever it fails.
pub(super) async fn read(reader: Reader) {
    let mut position = Position::default();
    let mut delay = Duration::from_millis(10);
    loop {
        wait_up(&reader.link).await;
        match read_once(&reader, &mut position).await {
            Ok(Stopped::Closed) => return,
            Ok(Stopped::Recreate) => delay = Duration::from_millis(10),
            Err(e) => {
                reader.link.set_ready(false);
                warn!("upstream: JetStream consumer: {e}; recreating it");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(reader.config.reconnect_max_delay);
            }
        }
    }
}

async fn wait_up(link: &UpstreamLink) {
    while !link.is_connected() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Finds (or creates) the stream, takes its epoch, and runs one consumer.
async fn read_once(reader: &Reader, position: &mut Position) -> Result<Stopped, String> {
    let config = &reader.config;
    let counters = &reader.link.counters;
    let mut stream = reader
        .js
        .get_or_create_stream(stream_config(config))
        .await
        .map_err(|e| format!("cannot get or create stream {:?}: {e}", config.stream))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read stream {:?}: {e}", config.stream))?
        .clone();
    let epoch = stream_epoch(&info.config.name, info.created.unix_timestamp_nanos());
    let state = &info.state;
    if position.epoch.as_deref() != Some(epoch.as_str()) {
        if position.epoch.is_some() {
            warn!(
                "upstream: stream {:?} was created anew; a new epoch begins",
                config.stream
            );
        }
        info!(
            "upstream: JetStream stream {:?}, epoch {epoch}, last sequence {}",
            config.stream, state.last_sequence
        );
        let wanted = wire::subject(&config.subject_prefix, ">");
        if !info.config.subjects.contains(&wanted) {
            warn!(
                "upstream: stream {:?} has subjects {:?}, not {wanted:?}: publishes outside them fail",
                config.stream, info.config.subjects
            );
        }
        let last = state.last_sequence;
        reader.sequencer.restart(&epoch, last);
        position.epoch = Some(epoch);
        position.last = last;
        position.filter = None;
        // The backfill: the last `history.max_events` sequences.
        let keep = reader.history.max_events as u64;
        let from = if keep == 0 {
            last + 1
        } else {
            state
                .first_sequence
                .max(1)
                .max(last.saturating_sub(keep) + 1)
        };
        position.backfill_from = from;
        position.backfill_to = last;
        position.last = from.saturating_sub(1);
        position.widened_until = 0;
        if from > last {
            reader.sequencer.backfilled(last);
            position.backfill_from = 0;
        }
        read_last_values(reader, &stream).await;
    } else if state.first_sequence > position.last + 1 {
        // The stream let events go (limits) before this relay read them.
        warn!(
            "upstream: events {}..{} left stream {:?} before this relay read them",
            position.last + 1,
            state.first_sequence - 1,
            config.stream
        );
        counters.upstream_cuts.fetch_add(1, Ordering::Relaxed);
        reader.sequencer.cut(Some(state.first_sequence - 1));
        position.last = state.first_sequence - 1;
    }
    consume(reader, &mut stream, position).await
}

/// Reads the last message of each subject matching `history.last_value`
/// into the last values (those the cache has no newer value for).
async fn read_last_values(reader: &Reader, stream: &Stream) {
    let mut budget = reader.history.max_channels;
    for pattern in &reader.history.last_value {
        if budget == 0 {
            break;
        }
        let subject = wire::subject(&reader.config.subject_prefix, pattern);
        let read = tokio::time::timeout(
            LAST_VALUES_WAIT,
            read_last_per_subject(reader, stream, subject, budget),
        )
        .await;
        match read {
            Ok(Ok(events)) => {
                budget = budget.saturating_sub(events.len());
                reader
                    .link
                    .counters
                    .last_values_read
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                reader.sequencer.seed_last_values(events);
            }
            Ok(Err(e)) => warn!("upstream: cannot read last values of {pattern:?}: {e}"),
            Err(_) => warn!("upstream: reading last values of {pattern:?} timed out"),
        }
    }
}

async fn read_last_per_subject(
    reader: &Reader,
    stream: &Stream,
    subject: String,
    most: usize,
) -> Result<Vec<(u64, EncodedEvent)>, String> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: reader.client.new_inbox(),
            filter_subject: subject,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(events);
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if let Some(event) = decode(reader, &message) {
            events.push((seq, event));
        }
        if pending == 0 || events.len() >= most {
            break;
        }
    }
    Ok(events)
}

fn decode(reader: &Reader, message: &jetstream::Message) -> Option<EncodedEvent> {
    match wire::decode(
        &reader.config.subject_prefix,
        &message.subject,
        &message.payload,
        &reader.limits,
        reader.sequencer.shaping(),
    ) {
        Ok(event) => Some(event),
        Err(e) => {
            reader.link.counters.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("upstream: dropped a message on {}: {e:?}", message.subject);
            None
        }
    }
}

/// The subjects filter for the current interest: the patterns clients hold
/// and those of `history.last_value`; `None` (the whole stream) before
/// 2.10, when turned off, while the backfill runs, or when a pattern is `>`.
fn wanted_filter(reader: &Reader, position: &Position) -> Option<Vec<Box<str>>> {
    if !filtering(reader) || position.last < position.backfill_to {
        return None;
    }
    let mut patterns: BTreeSet<Box<str>> = reader.patterns.patterns().into_iter().collect();
    patterns.extend(reader.history.last_value.iter().map(|p| p.as_str().into()));
    filter_of(patterns)
}

/// The consumer's subject filters for `patterns`: those no other covers.
/// NATS refuses filters that overlap, so when two that remain still
/// overlap (`a.*` and `*.b`) the consumer reads the whole stream (`None`).
fn filter_of(patterns: BTreeSet<Box<str>>) -> Option<Vec<Box<str>>> {
    if patterns.is_empty() || patterns.contains(">") {
        return None;
    }
    let all: Vec<&Box<str>> = patterns.iter().collect();
    let kept: Vec<Box<str>> = all
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            !all.iter().enumerate().any(|(j, q)| {
                j != *i
                    && crate::route::pattern_covers(q, p)
                    && (*i > j || !crate::route::pattern_covers(p, q))
            })
        })
        .map(|(_, p)| (*p).clone())
        .collect();
    for (i, a) in kept.iter().enumerate() {
        if kept[i + 1..].iter().any(|b| collide(a, b)) {
            return None;
        }
    }
    Some(kept)
}

/// Whether some channel matches both patterns.
fn collide(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// Whether the consumer reads only what clients hold: `filter_subjects`
/// needs NATS 2.10 (`filter_subjects` on consumers).
fn filtering(reader: &Reader) -> bool {
    reader.config.filter_subjects && reader.client.is_server_compatible(2, 10, 0)
}

/// Whether a message the widened consumer found before its head matched the
/// previous filter (else it is older than the interest in it).
fn held_before(position: &Position, subject: &str, config: &UpstreamConfig) -> bool {
    let Some(before) = &position.before else {
        return true;
    };
    let Some(channel) = subject.strip_prefix(config.subject_prefix.as_str()) else {
        return false;
    };
    before
        .iter()
        .any(|pattern| crate::route::pattern_matches(pattern, channel))
}

/// Runs one ordered consumer from `position.last + 1` until it fails, the
/// connection is lost and back, or the interest changes its filter.
async fn consume(
    reader: &Reader,
    stream: &mut Stream,
    position: &mut Position,
) -> Result<Stopped, String> {
    let config = &reader.config;
    let counters = &reader.link.counters;
    let filter = wanted_filter(reader, position);
    let subjects: Vec<String> = filter
        .iter()
        .flatten()
        .map(|p| wire::subject(&config.subject_prefix, p))
        .collect();
    let start = position.last + 1;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: reader.client.new_inbox(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            filter_subjects: subjects,
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    counters.consumers_created.fetch_add(1, Ordering::Relaxed);
    reader.link.set_ready(true);
    // What this consumer receives, for the history (2.10 filters).
    if filter != position.filter {
        let head = stream
            .get_info()
            .await
            .map_err(|e| format!("cannot read the stream: {e}"))?
            .state
            .last_sequence;
        let before = position.filter.take();
        let kept: Option<Vec<Box<str>>> = match (&before, &filter) {
            (None, new) => new.clone(),
            (Some(old), None) => Some(old.clone()),
            (Some(old), Some(new)) => {
                Some(old.iter().filter(|p| new.contains(p)).cloned().collect())
            }
        };
        // Up to the head, what both filters take; after it, the new one's.
        reader.sequencer.cover_at(start, kept);
        reader
            .sequencer
            .cover_at(head.max(start - 1) + 1, filter.clone());
        position.widened_until = head;
        position.before = before;
        position.filter = filter;
    }
    if position.last < position.backfill_to && consumer.cached_info().num_pending == 0 {
        // Nothing left to backfill (the events up to the base were deleted).
        finish_backfill(reader, position);
    }
    let messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot read the consumer: {e}"))?;
    let mut chunks = messages.ready_chunks(DELIVER_BATCH);
    let disconnects = counters.disconnects.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(config.interest_debounce.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live = Vec::with_capacity(DELIVER_BATCH);
    let mut backfill = Vec::new();
    loop {
        tokio::select! {
            chunk = chunks.next() => {
                let Some(chunk) = chunk else {
                    return Err("the consumer ended".into());
                };
                let mut failed = None;
                for item in chunk {
                    let message = match item {
                        Ok(message) => message,
                        Err(e) => {
                            failed = Some(format!("{e}"));
                            break;
                        }
                    };
                    let seq = match message.info() {
                        Ok(info) => info.stream_sequence,
                        Err(e) => {
                            failed = Some(format!("a message without its sequence: {e}"));
                            break;
                        }
                    };
                    if seq <= position.last {
                        counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    position.last = seq;
                    if seq <= position.widened_until && !held_before(position, &message.subject, config) {
                        continue;
                    }
                    let Some(event) = decode(reader, &message) else {
                        continue;
                    };
                    if seq <= position.backfill_to {
                        backfill.push((seq, event));
                    } else {
                        live.push((seq, event));
                    }
                }
                if !backfill.is_empty() {
                    counters.backfilled.fetch_add(backfill.len() as u64, Ordering::Relaxed);
                    reader.sequencer.backfill(std::mem::take(&mut backfill));
                }
                if position.last >= position.backfill_to && position.backfill_from > 0 {
                    finish_backfill(reader, position);
                }
                if !live.is_empty() && !append(reader, &mut live).await {
                    return Ok(Stopped::Closed);
                }
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            _ = tick.tick() => {
                if reader.sequencer.is_closed() {
                    return Ok(Stopped::Closed);
                }
                if counters.disconnects.load(Ordering::Relaxed) != disconnects {
                    // The consumer may be gone with the server: start a new
                    // one from where this relay is, once connected.
                    return Ok(Stopped::Recreate);
                }
                if filtering(reader) && wanted_filter(reader, position) != position.filter {
                    return Ok(Stopped::Recreate);
                }
            }
        }
    }
}

/// The backfill reached the stream's last sequence at start: resumes from
/// its beginning on can be answered.
fn finish_backfill(reader: &Reader, position: &mut Position) {
    if position.backfill_from == 0 {
        return;
    }
    reader
        .sequencer
        .backfilled(position.backfill_from.saturating_sub(1));
    position.backfill_from = 0;
}

/// What reads resumes from the stream works with.
#[derive(Clone)]
pub(super) struct Fetcher {
    pub client: Client,
    pub js: Context,
    pub sequencer: Arc<Sequencer>,
    pub link: Arc<UpstreamLink>,
    pub config: UpstreamConfig,
    pub max_replay: usize,
    pub limits: SubjectLimits,
}

/// Most events matching a resume read from JetStream, as a multiple of
/// `history.max_replay`: the reactor applies the client's token to them
/// and then `max_replay` itself; a read that finds more answers `too_many`.
const FETCH_SLACK: usize = 4;

/// Reads a resume's events from the stream by start sequence (the relay's
/// history did not reach back far enough) and hands them to the reactor
/// that asked, within `publish_timeout`; `gone` when the stream no longer
/// has them or the read fails.
pub(super) async fn fetch(fetcher: Fetcher, request: FetchRequest) {
    let counters = &fetcher.link.counters;
    counters.fetches.fetch_add(1, Ordering::Relaxed);
    let result = tokio::time::timeout(
        fetcher.config.publish_timeout,
        read_range(&fetcher, &request),
    )
    .await
    .unwrap_or_else(|_| {
        warn!("upstream: reading a resume from JetStream timed out");
        Err(Gap::Gone)
    });
    if let Ok(fetched) = &result {
        counters
            .fetched
            .fetch_add(fetched.events.len() as u64, Ordering::Relaxed);
    }
    let answer = FetchAnswer {
        key: request.key,
        id: request.id,
        result,
    };
    fetcher.link.answer_fetch(request.reactor, answer);
}

/// Core NATS keeps nothing to read back.
pub(super) fn refuse_fetch(link: &UpstreamLink, request: FetchRequest) {
    let answer = FetchAnswer {
        key: request.key,
        id: request.id,
        result: Err(Gap::Gone),
    };
    link.answer_fetch(request.reactor, answer);
}

async fn read_range(fetcher: &Fetcher, request: &FetchRequest) -> Result<Fetched, Gap> {
    let config = &fetcher.config;
    let gone = |e: &dyn std::fmt::Display| {
        warn!("upstream: cannot read a resume from JetStream: {e}");
        Gap::Gone
    };
    let mut stream = fetcher
        .js
        .get_stream(&config.stream)
        .await
        .map_err(|e| gone(&e))?;
    let state = stream.info().await.map_err(|e| gone(&e))?.state.clone();
    let head = state.last_sequence;
    if request.since.saturating_add(1) < state.first_sequence {
        // Events after `since` have left the stream too.
        return Err(Gap::Gone);
    }
    let mut events = Vec::new();
    if head <= request.since {
        return Ok(Fetched {
            events,
            through: head,
        });
    }
    // One pattern: NATS filters (any server has one filter subject);
    // several: the range is read whole and matched here.
    let filter_subject = match request.channels.as_slice() {
        [only] => wire::subject(&config.subject_prefix, only),
        _ => String::new(),
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: fetcher.client.new_inbox(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: request.since + 1,
            },
            filter_subject,
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| gone(&e))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(Fetched {
            events,
            through: head,
        });
    }
    let most = fetcher.max_replay.saturating_mul(FETCH_SLACK).max(1);
    let mut messages = consumer.messages().await.map_err(|e| gone(&e))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| gone(&e))?;
        let info = message.info().map_err(|e| gone(&e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > head {
            break;
        }
        let wanted = message
            .subject
            .strip_prefix(config.subject_prefix.as_str())
            .is_some_and(|channel| {
                request
                    .channels
                    .iter()
                    .any(|p| crate::route::pattern_matches(p, channel))
            });
        if wanted {
            if let Ok(event) = wire::decode(
                &config.subject_prefix,
                &message.subject,
                &message.payload,
                &fetcher.limits,
                fetcher.sequencer.shaping(),
            ) {
                if events.len() == most {
                    return Err(Gap::TooMany);
                }
                events.push((seq, event));
            }
        }
        if seq >= head || pending == 0 {
            break;
        }
    }
    Ok(Fetched {
        events,
        through: head,
    })
}

/// Hands live events to the sequencer, waiting while it is full (the
/// consumer is not read meanwhile, so NATS holds the rest: flow control).
/// False once the relay stops.
async fn append(reader: &Reader, live: &mut Vec<(u64, EncodedEvent)>) -> bool {
    // Counted before they are appended: a client may see them (and read
    // the counter) as soon as they are. None is stale here (the consumer
    // skips what this relay already took), so none is counted twice.
    let received = &reader.link.counters.received;
    received.fetch_add(live.len() as u64, Ordering::Relaxed);
    loop {
        match reader.sequencer.try_append_numbered(live) {
            Ok(stale) => {
                received.fetch_sub(stale as u64, Ordering::Relaxed);
                return true;
            }
            Err(AppendError::Full) => tokio::time::sleep(SEQUENCER_RETRY).await,
            Err(AppendError::Closed) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str]) -> Option<Vec<String>> {
        let set = patterns.iter().map(|p| Box::<str>::from(*p)).collect();
        filter_of(set).map(|kept| kept.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn filters_never_overlap() {
        assert_eq!(filter(&[]), None, "no interest: the whole stream");
        assert_eq!(filter(&["a.>", ">"]), None);
        assert_eq!(
            filter(&["job.*", "job.>", "job.1"]),
            Some(vec!["job.>".into()])
        );
        assert_eq!(filter(&["a", "b.*"]), Some(vec!["a".into(), "b.*".into()]));
        assert_eq!(filter(&["a.*", "*.b"]), None, "they overlap on a.b");
        assert!(collide("a.*", "*.b") && collide("a.>", "a.b.c") && !collide("a.*", "a.b.c"));
    }
}
