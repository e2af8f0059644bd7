//! The upstream thread: one async-nats client on a current-thread tokio
//! runtime. Core NATS: three tasks, publishes out, messages in (to the
//! sequencer), and interest (NATS subscriptions following the patterns
//! clients hold). JetStream: publishes out, and the stream read in
//! (`super::jetstream`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::Publish;
use async_nats::{Client, ConnectOptions, HeaderMap, Message};
use futures::StreamExt;
use tokio::sync::mpsc::{self, error::TrySendError, UnboundedReceiver};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::jetstream;
use super::link::{Outgoing, PublishAnswer, Published, Refused, UpstreamLink};
use super::wire::{self, SeenIds, ID_HEADER};
use super::UpstreamConfig;
use crate::config::HistoryConfig;
use crate::fanout::event::EncodedEvent;
use crate::fanout::sequencer::{AppendError, Sequencer};
use crate::route::SubjectLimits;
use crate::stats::PatternCounts;

/// What the thread works with.
pub(crate) struct Parts {
    pub config: UpstreamConfig,
    pub link: Arc<UpstreamLink>,
    pub outgoing: UnboundedReceiver<Outgoing>,
    pub sequencer: Arc<Sequencer>,
    pub patterns: Arc<PatternCounts>,
    pub limits: SubjectLimits,
    /// Names this relay's messages (`Tidings-Id`), unique per run.
    pub relay_id: String,
    /// JetStream mode reads the stream back into the history and the last
    /// values these say.
    pub history: HistoryConfig,
}

/// What reaches the core-mode inbound task, in order.
enum Inbound {
    Message(Message),
    /// Events were lost here (the connection dropped, or messages were
    /// dropped for want of room): `Sequencer::cut`.
    Cut,
}

/// The core-mode inbound queue and the cut owed to it when it was full.
#[derive(Clone)]
struct InboundQueue {
    sender: mpsc::Sender<Inbound>,
    cut_owed: Arc<AtomicBool>,
    link: Arc<UpstreamLink>,
}

impl InboundQueue {
    /// Queues a cut now, or owes it to the queue's next room.
    fn cut(&self) {
        if self.sender.try_send(Inbound::Cut).is_err() {
            self.cut_owed.store(true, Ordering::Release);
        }
    }

    /// Queues a message after any owed cut; when full, drops it (counted)
    /// and owes a cut in its place. False once the queue is closed.
    fn push(&self, message: Message) -> bool {
        if self.cut_owed.load(Ordering::Acquire) {
            match self.sender.try_send(Inbound::Cut) {
                Ok(()) => self.cut_owed.store(false, Ordering::Release),
                Err(TrySendError::Full(_)) => {
                    self.link.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match self.sender.try_send(Inbound::Message(message)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.link.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.cut_owed.store(true, Ordering::Release);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Queues an owed cut if there is room now.
    fn pay_owed_cut(&self) {
        if self.cut_owed.load(Ordering::Acquire) && self.sender.try_send(Inbound::Cut).is_ok() {
            self.cut_owed.store(false, Ordering::Release);
        }
    }
}

/// Most publishes sent to NATS before one flush confirms them all.
const PUBLISH_BATCH: usize = 1024;
/// Most messages handed to the sequencer at once.
const DELIVER_BATCH: usize = 1024;
/// How long the inbound task waits before retrying a full sequencer.
const SEQUENCER_RETRY: Duration = Duration::from_millis(1);

pub(crate) fn run(parts: Parts) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            warn!("upstream: cannot start its runtime: {e}; the relay runs without NATS");
            return;
        }
    };
    runtime.block_on(serve(parts));
}

async fn serve(parts: Parts) {
    let Parts {
        config,
        link,
        outgoing,
        sequencer,
        patterns,
        limits,
        relay_id,
        history,
    } = parts;
    let (inbound_tx, inbound_rx) = mpsc::channel(config.subscription_capacity);
    let queue = InboundQueue {
        sender: inbound_tx,
        cut_owed: Arc::new(AtomicBool::new(false)),
        link: Arc::clone(&link),
    };
    // Core NATS loses what is published while the relay is cut off: the
    // event callback makes the cuts. JetStream resumes the stream instead.
    let cuts = (!config.jetstream).then(|| queue.clone());
    let options = match options(&config, &link, &relay_id, cuts).await {
        Ok(options) => options,
        Err(e) => {
            warn!("upstream: {e}; the relay runs without NATS");
            return;
        }
    };
    // Returns at once; the client connects (and reconnects) in the
    // background with backoff, so the relay serves its clients meanwhile.
    let client = match options.connect(config.nats.as_slice()).await {
        Ok(client) => client,
        Err(e) => {
            warn!("upstream: cannot create the NATS client: {e}; the relay runs without NATS");
            return;
        }
    };
    let (inbound, interest, sink) = if config.jetstream {
        let js = async_nats::jetstream::new(client.clone());
        let fetcher = jetstream::Fetcher {
            client: client.clone(),
            js: js.clone(),
            sequencer: Arc::clone(&sequencer),
            link: Arc::clone(&link),
            config: config.clone(),
            max_replay: history.max_replay,
            limits,
        };
        let reader = jetstream::Reader {
            client: client.clone(),
            js: js.clone(),
            sequencer: Arc::clone(&sequencer),
            link: Arc::clone(&link),
            patterns,
            config: config.clone(),
            history,
            limits,
        };
        (
            tokio::spawn(jetstream::read(reader)),
            None,
            Sink::JetStream(js, Box::new(fetcher)),
        )
    } else {
        let inbound = tokio::spawn(deliver(
            inbound_rx,
            Arc::clone(&sequencer),
            Arc::clone(&link),
            config.clone(),
            limits,
        ));
        let interest = tokio::spawn(follow_interest(
            client.clone(),
            patterns,
            queue,
            Arc::clone(&link),
            config.clone(),
        ));
        (inbound, Some(interest), Sink::Core(client.clone()))
    };
    publish(sink, outgoing, &link, &config, &relay_id).await;
    if let Some(interest) = interest {
        interest.abort();
    }
    inbound.abort();
    if link.is_connected() {
        let _ = tokio::time::timeout(config.publish_timeout, client.flush()).await;
    }
    link.set_up(false);
}

async fn options(
    config: &UpstreamConfig,
    link: &Arc<UpstreamLink>,
    relay_id: &str,
    cuts: Option<InboundQueue>,
) -> Result<ConnectOptions, String> {
    let mut options = match &config.creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| format!("upstream.creds_file {}: {e}", path.display()))?,
        None => ConnectOptions::new(),
    };
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    let events = Arc::clone(link);
    let cut_off = Arc::new(AtomicBool::new(false));
    let max_delay = config.reconnect_max_delay;
    Ok(options
        .name(format!("tidings {relay_id}"))
        .require_tls(config.tls_required)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempts| {
            let doubled = Duration::from_millis(1 << attempts.min(20));
            doubled.min(max_delay)
        })
        .subscription_capacity(config.subscription_capacity)
        .event_callback(move |event| {
            let link = Arc::clone(&events);
            let cuts = cuts.clone();
            let cut_off = Arc::clone(&cut_off);
            async move { on_event(&link, event, cuts.as_ref(), &cut_off).await }
        }))
}

/// Follows the connection. In core mode, what NATS published while the
/// relay was cut off never reaches it: a cut when the connection drops
/// (subscribers learn it then) and another when it is back (after what the
/// old connection had delivered), and one where the client dropped
/// messages for a slow consumer.
async fn on_event(
    link: &UpstreamLink,
    event: async_nats::Event,
    cuts: Option<&InboundQueue>,
    cut_off: &AtomicBool,
) {
    use async_nats::Event;
    match event {
        Event::Connected => {
            info!("upstream: connected to NATS");
            link.set_up(true);
            if cut_off.swap(false, Ordering::AcqRel) {
                if let Some(cuts) = cuts {
                    // Let the subscriptions' tasks hand on what the old
                    // connection delivered first.
                    for _ in 0..16 {
                        tokio::task::yield_now().await;
                    }
                    cuts.cut();
                }
            }
        }
        Event::Disconnected => {
            warn!("upstream: lost NATS; reconnecting");
            link.set_up(false);
            link.counters.disconnects.fetch_add(1, Ordering::Relaxed);
            cut_off.store(true, Ordering::Release);
            if let Some(cuts) = cuts {
                cuts.cut();
            }
        }
        Event::Closed => link.set_up(false),
        Event::SlowConsumer(_) => {
            link.counters.slow_consumer.fetch_add(1, Ordering::Relaxed);
            if let Some(cuts) = cuts {
                cuts.cut();
            }
        }
        other => info!("upstream: {other}"),
    }
}

/// Where publishes go (and, with JetStream, where resumes are read from).
enum Sink {
    Core(Client),
    JetStream(async_nats::jetstream::Context, Box<jetstream::Fetcher>),
}

/// Sends publishes in batches and answers each HTTP request once NATS has
/// confirmed its events: core NATS, one flush confirming each batch;
/// JetStream, the stream's ack of every event (its sequence answers).
async fn publish(
    sink: Sink,
    mut outgoing: UnboundedReceiver<Outgoing>,
    link: &UpstreamLink,
    config: &UpstreamConfig,
    relay_id: &str,
) {
    let mut next_id: u64 = 0;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        if outgoing.recv_many(&mut batch, PUBLISH_BATCH).await == 0 {
            return;
        }
        // Reads for resumes go on beside the publishes.
        for item in &mut batch {
            if !matches!(item, Outgoing::Fetch(_)) {
                continue;
            }
            let Outgoing::Fetch(request) = std::mem::replace(item, Outgoing::Fetched) else {
                continue;
            };
            match &sink {
                Sink::JetStream(_, fetcher) => {
                    tokio::spawn(jetstream::fetch((**fetcher).clone(), request));
                }
                Sink::Core(_) => jetstream::refuse_fetch(link, request),
            }
        }
        batch.retain(|item| !matches!(item, Outgoing::Fetched));
        if batch.is_empty() {
            continue;
        }
        let stop = batch.iter().any(|o| matches!(o, Outgoing::Stop));
        if stop && batch.len() == 1 {
            return;
        }
        let confirmed = match &sink {
            Sink::Core(client) => {
                let all = send_core(client, &batch, config, relay_id, &mut next_id).await;
                vec![all.then_some(None); batch.len()]
            }
            Sink::JetStream(js, _) => {
                send_jetstream(js, &batch, config, relay_id, &mut next_id).await
            }
        };
        for (item, confirmed) in batch.drain(..).zip(confirmed) {
            answer(link, item, confirmed);
        }
        if stop {
            return;
        }
    }
}

fn events_of(item: &Outgoing) -> &[EncodedEvent] {
    match item {
        Outgoing::Http { events, .. } => events,
        Outgoing::Embedded(event) => std::slice::from_ref(event),
        Outgoing::Stop | Outgoing::Fetch(_) | Outgoing::Fetched => &[],
    }
}

fn headers(relay_id: &str, next_id: &mut u64) -> HeaderMap {
    *next_id += 1;
    let mut headers = HeaderMap::new();
    headers.insert(ID_HEADER, format!("{relay_id}-{next_id}").as_str());
    headers
}

/// Core NATS: publishes the batch and flushes; true once NATS confirmed.
async fn send_core(
    client: &Client,
    batch: &[Outgoing],
    config: &UpstreamConfig,
    relay_id: &str,
    next_id: &mut u64,
) -> bool {
    let sent = tokio::time::timeout(config.publish_timeout, async {
        for item in batch {
            for event in events_of(item) {
                let subject = wire::subject(&config.subject_prefix, &event.channel);
                client
                    .publish_with_headers(
                        subject,
                        headers(relay_id, next_id),
                        event.envelope().into(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        client.flush().await.map_err(|e| e.to_string())
    })
    .await;
    match sent {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            warn!("upstream: publish not confirmed: {e}");
            false
        }
        Err(_) => {
            warn!("upstream: NATS did not confirm a publish within upstream.publish_timeout");
            false
        }
    }
}

/// JetStream: sends every event of the batch, then waits for the stream's
/// acks; per item, the sequence of its last event, or None (`Err`) if any
/// of its events was not acknowledged within `publish_timeout`.
async fn send_jetstream(
    js: &async_nats::jetstream::Context,
    batch: &[Outgoing],
    config: &UpstreamConfig,
    relay_id: &str,
    next_id: &mut u64,
) -> Vec<Option<Option<u64>>> {
    let deadline = tokio::time::Instant::now() + config.publish_timeout;
    let mut acks = Vec::with_capacity(batch.len());
    let mut failed = None;
    for item in batch {
        let mut item_acks = Vec::with_capacity(events_of(item).len());
        for event in events_of(item) {
            if failed.is_some() {
                break;
            }
            let subject = wire::subject(&config.subject_prefix, &event.channel);
            let message = Publish::build()
                .payload(event.envelope().into())
                .headers(headers(relay_id, next_id));
            match tokio::time::timeout_at(deadline, js.send_publish(subject, message)).await {
                Ok(Ok(ack)) => item_acks.push(ack),
                Ok(Err(e)) => failed = Some(e.to_string()),
                Err(_) => failed = Some("timed out".to_string()),
            }
        }
        acks.push(item_acks);
    }
    let mut answers = Vec::with_capacity(batch.len());
    for (item, item_acks) in batch.iter().zip(acks) {
        let complete = item_acks.len() == events_of(item).len();
        let mut last = None;
        let mut ok = complete;
        for ack in item_acks {
            match tokio::time::timeout_at(deadline, std::future::IntoFuture::into_future(ack)).await
            {
                Ok(Ok(ack)) => last = Some(ack.sequence),
                Ok(Err(e)) => {
                    failed.get_or_insert_with(|| e.to_string());
                    ok = false;
                }
                Err(_) => {
                    failed.get_or_insert_with(|| "timed out".to_string());
                    ok = false;
                }
            }
        }
        answers.push(ok.then_some(last));
    }
    if let Some(e) = failed {
        warn!("upstream: JetStream did not acknowledge a publish: {e}");
    }
    answers
}

/// Answers an item: `confirmed` is `Some` (with the JetStream sequence of
/// its last event) once NATS confirmed it, `None` when not.
fn answer(link: &UpstreamLink, item: Outgoing, confirmed: Option<Option<u64>>) {
    let counters = &link.counters;
    match item {
        Outgoing::Http {
            reactor,
            key,
            id,
            events,
        } => {
            link.release(events.len());
            let result = if let Some(seq) = confirmed {
                counters
                    .published
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                Ok(Published {
                    count: events.len(),
                    seq,
                })
            } else {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                Err(Refused::Down)
            };
            link.answer(reactor, PublishAnswer { key, id, result });
        }
        Outgoing::Embedded(_) => {
            link.release(1);
            let counter = if confirmed.is_some() {
                &counters.published
            } else {
                &counters.lost_publishes
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Outgoing::Stop | Outgoing::Fetch(_) | Outgoing::Fetched => {}
    }
}

/// Hands messages from NATS to the sequencer in arrival order, dropping
/// second copies. While the sequencer is full it waits here, and messages
/// queue in the client's bounded subscription buffers (then NATS drops
/// them, counted as slow consumer).
async fn deliver(
    mut inbound: mpsc::Receiver<Inbound>,
    sequencer: Arc<Sequencer>,
    link: Arc<UpstreamLink>,
    config: UpstreamConfig,
    limits: SubjectLimits,
) {
    let mut seen = SeenIds::new(config.dedup_window);
    let mut messages = Vec::with_capacity(DELIVER_BATCH);
    let mut events = Vec::with_capacity(DELIVER_BATCH);
    let counters = &link.counters;
    loop {
        if inbound.recv_many(&mut messages, DELIVER_BATCH).await == 0 {
            return;
        }
        for item in messages.drain(..) {
            let message = match item {
                Inbound::Message(message) => message,
                Inbound::Cut => {
                    // What came before goes in before the cut.
                    if !append(&sequencer, &link, &mut events).await {
                        return;
                    }
                    counters.upstream_cuts.fetch_add(1, Ordering::Relaxed);
                    sequencer.cut(None);
                    continue;
                }
            };
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get(ID_HEADER))
                .map(|v| v.as_str());
            if id.is_some_and(|id| !seen.first(id)) {
                counters.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match wire::decode(
                &config.subject_prefix,
                &message.subject,
                &message.payload,
                &limits,
                sequencer.shaping(),
            ) {
                Ok(event) => events.push(event),
                Err(e) => {
                    counters.invalid.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("upstream: dropped a message on {}: {e:?}", message.subject);
                }
            }
        }
        if !append(&sequencer, &link, &mut events).await {
            return;
        }
    }
}

/// Hands events to the sequencer, waiting while it is full; false once the
/// relay stops.
async fn append(
    sequencer: &Sequencer,
    link: &UpstreamLink,
    events: &mut Vec<EncodedEvent>,
) -> bool {
    if events.is_empty() {
        return true;
    }
    // Counted before they are appended: a client may see them (and read
    // the counter) as soon as they are.
    let count = events.len() as u64;
    link.counters.received.fetch_add(count, Ordering::Relaxed);
    loop {
        match sequencer.try_append(events) {
            Ok(_) => return true,
            Err(AppendError::Full) => tokio::time::sleep(SEQUENCER_RETRY).await,
            Err(AppendError::Closed) => return false,
        }
    }
}

/// Keeps one NATS subscription per pattern clients hold. Looks at the
/// patterns once per `interest_debounce`, so many changes (a reconnect
/// storm) become one subscribe or unsubscribe per pattern.
async fn follow_interest(
    client: Client,
    patterns: Arc<PatternCounts>,
    inbound: InboundQueue,
    link: Arc<UpstreamLink>,
    config: UpstreamConfig,
) {
    let mut held: HashMap<Box<str>, JoinHandle<()>> = HashMap::new();
    let mut seen_generation = None;
    let mut tick = tokio::time::interval(config.interest_debounce.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        inbound.pay_owed_cut();
        let generation = patterns.generation();
        if seen_generation == Some(generation) {
            continue;
        }
        let wanted = patterns.patterns();
        let mut changes = 0;
        held.retain(|pattern, task| {
            let keep = wanted.contains(pattern);
            if !keep {
                // Dropping the subscriber unsubscribes it.
                task.abort();
                changes += 1;
            }
            keep
        });
        let mut complete = true;
        for pattern in wanted {
            if held.contains_key(&pattern) {
                continue;
            }
            let subject = wire::subject(&config.subject_prefix, &pattern);
            match client.subscribe(subject).await {
                Ok(subscriber) => {
                    held.insert(pattern, tokio::spawn(forward(subscriber, inbound.clone())));
                    changes += 1;
                }
                Err(e) => {
                    warn!("upstream: cannot subscribe to {pattern:?}: {e}; retrying");
                    complete = false;
                }
            }
        }
        // A flush returns once NATS has processed the subscribes before
        // it: the gauge below then counts subscriptions NATS holds.
        if changes > 0 && link.is_connected() {
            let _ = tokio::time::timeout(config.publish_timeout, client.flush()).await;
        }
        if complete {
            seen_generation = Some(generation);
        }
        let counters = &link.counters;
        counters
            .interest_changes
            .fetch_add(changes, Ordering::Relaxed);
        counters
            .subscriptions
            .store(held.len() as u64, Ordering::Relaxed);
    }
}

/// Hands a subscription's messages to the inbound queue without waiting:
/// when it is full the message is dropped, counted, and a cut takes its
/// place, so the loss is never silent (see `InboundQueue`).
async fn forward(mut subscriber: async_nats::Subscriber, inbound: InboundQueue) {
    while let Some(message) = subscriber.next().await {
        if !inbound.push(message) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::delivery::Shaping;
    use crate::fanout::history::History;

    fn message(n: u8) -> Message {
        Message {
            subject: "tidings.feed".into(),
            reply: None,
            payload: bytes::Bytes::from(vec![n]),
            headers: None,
            status: None,
            description: None,
            length: 1,
        }
    }

    fn queue(room: usize) -> (InboundQueue, mpsc::Receiver<Inbound>) {
        let history = History::new(&HistoryConfig::default(), "test-epoch");
        let sequencer = Sequencer::new(16, vec![], Arc::default(), history, Shaping::default());
        let (outgoing, _) = mpsc::unbounded_channel();
        let link = UpstreamLink::new(
            outgoing,
            16,
            Duration::from_secs(1),
            0,
            Arc::new(sequencer),
            false,
        );
        let (sender, receiver) = mpsc::channel(room);
        let queue = InboundQueue {
            sender,
            cut_owed: Arc::default(),
            link: Arc::new(link),
        };
        (queue, receiver)
    }

    /// What the inbound task would read: message payloads, and `None` for a cut.
    fn drain(receiver: &mut mpsc::Receiver<Inbound>) -> Vec<Option<u8>> {
        std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|inbound| match inbound {
                Inbound::Message(m) => Some(m.payload[0]),
                Inbound::Cut => None,
            })
            .collect()
    }

    /// A relay slower than NATS never holds more than the queue's room: what
    /// does not fit is dropped, counted, and followed by a cut, so that its
    /// subscribers are told (never a silent loss).
    #[test]
    fn a_full_inbound_queue_drops_counts_and_owes_a_cut() {
        let (queue, mut receiver) = queue(2);
        for n in 1..=4 {
            assert!(queue.push(message(n)));
        }
        let dropped = || queue.link.counters.dropped.load(Ordering::Relaxed);
        assert_eq!(dropped(), 2, "3 and 4 did not fit");
        assert_eq!(drain(&mut receiver), [Some(1), Some(2)]);
        // The cut goes before anything newer.
        assert!(queue.push(message(5)));
        assert_eq!(drain(&mut receiver), [None, Some(5)]);
        assert_eq!(dropped(), 2);
        // An owed cut is paid as soon as there is room, without a message.
        queue.push(message(6));
        queue.push(message(7));
        queue.push(message(8));
        assert_eq!(dropped(), 3);
        assert_eq!(drain(&mut receiver), [Some(6), Some(7)]);
        queue.pay_owed_cut();
        assert_eq!(drain(&mut receiver), [None]);
        queue.pay_owed_cut();
        assert_eq!(drain(&mut receiver), [], "one cut per loss");
        drop(receiver);
        assert!(!queue.push(message(9)), "closed");
    }
}
