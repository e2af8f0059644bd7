//! The upstream thread: one async-nats client on a current-thread tokio
//! runtime. Three tasks: publishes out, messages in (to the sequencer),
//! and interest (NATS subscriptions following the patterns clients hold).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, HeaderMap, Message};
use futures::StreamExt;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::link::{Outgoing, PublishAnswer, Refused, UpstreamLink};
use super::wire::{self, SeenIds, ID_HEADER};
use super::UpstreamConfig;
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
    } = parts;
    let options = match options(&config, &link, &relay_id).await {
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
    let (inbound_tx, inbound_rx) = mpsc::channel(config.subscription_capacity);
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
        inbound_tx,
        Arc::clone(&link),
        config.clone(),
    ));
    publish(client.clone(), outgoing, &link, &config, &relay_id).await;
    interest.abort();
    inbound.abort();
    if link.is_up() {
        let _ = tokio::time::timeout(config.publish_timeout, client.flush()).await;
    }
    link.set_up(false);
}

async fn options(
    config: &UpstreamConfig,
    link: &Arc<UpstreamLink>,
    relay_id: &str,
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
            async move { on_event(&link, event) }
        }))
}

fn on_event(link: &UpstreamLink, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => {
            info!("upstream: connected to NATS");
            link.set_up(true);
        }
        Event::Disconnected => {
            warn!("upstream: lost NATS; reconnecting");
            link.set_up(false);
            link.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        Event::Closed => link.set_up(false),
        Event::SlowConsumer(_) => {
            link.counters.slow_consumer.fetch_add(1, Ordering::Relaxed);
        }
        other => info!("upstream: {other}"),
    }
}

/// Sends publishes in batches, one flush confirming each batch, and answers
/// each HTTP request once NATS has confirmed its events.
async fn publish(
    client: Client,
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
        let stop = batch.iter().any(|o| matches!(o, Outgoing::Stop));
        if stop && batch.len() == 1 {
            return;
        }
        let sent = tokio::time::timeout(config.publish_timeout, async {
            for item in &batch {
                let events: &[EncodedEvent] = match item {
                    Outgoing::Http { events, .. } => events,
                    Outgoing::Embedded(event) => std::slice::from_ref(event),
                    Outgoing::Stop => &[],
                };
                for event in events {
                    next_id += 1;
                    let mut headers = HeaderMap::new();
                    headers.insert(ID_HEADER, format!("{relay_id}-{next_id}").as_str());
                    let subject = wire::subject(&config.subject_prefix, &event.channel);
                    client
                        .publish_with_headers(subject, headers, event.envelope().into())
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            client.flush().await.map_err(|e| e.to_string())
        })
        .await;
        let confirmed = match sent {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                warn!("upstream: publish not confirmed: {e}");
                false
            }
            Err(_) => {
                warn!("upstream: NATS did not confirm a publish within upstream.publish_timeout");
                false
            }
        };
        for item in batch.drain(..) {
            answer(link, item, confirmed);
        }
        if stop {
            return;
        }
    }
}

fn answer(link: &UpstreamLink, item: Outgoing, confirmed: bool) {
    let counters = &link.counters;
    match item {
        Outgoing::Http {
            reactor,
            key,
            id,
            events,
        } => {
            link.release(events.len());
            let result = if confirmed {
                counters
                    .published
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                Ok(events.len())
            } else {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                Err(Refused::Down)
            };
            link.answer(reactor, PublishAnswer { key, id, result });
        }
        Outgoing::Embedded(_) => {
            link.release(1);
            let counter = if confirmed {
                &counters.published
            } else {
                &counters.lost_publishes
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Outgoing::Stop => {}
    }
}

/// Hands messages from NATS to the sequencer in arrival order, dropping
/// second copies. While the sequencer is full it waits here, and messages
/// queue in the client's bounded subscription buffers (then NATS drops
/// them, counted as slow consumer).
async fn deliver(
    mut inbound: mpsc::Receiver<Message>,
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
        for message in messages.drain(..) {
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
        let count = events.len() as u64;
        loop {
            match sequencer.try_append(&mut events) {
                Ok(_) => break,
                Err(AppendError::Full) => tokio::time::sleep(SEQUENCER_RETRY).await,
                Err(AppendError::Closed) => return,
            }
        }
        counters.received.fetch_add(count, Ordering::Relaxed);
    }
}

/// Keeps one NATS subscription per pattern clients hold. Looks at the
/// patterns once per `interest_debounce`, so many changes (a reconnect
/// storm) become one subscribe or unsubscribe per pattern.
async fn follow_interest(
    client: Client,
    patterns: Arc<PatternCounts>,
    inbound: mpsc::Sender<Message>,
    link: Arc<UpstreamLink>,
    config: UpstreamConfig,
) {
    let mut held: HashMap<Box<str>, JoinHandle<()>> = HashMap::new();
    let mut seen_generation = None;
    let mut tick = tokio::time::interval(config.interest_debounce.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
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
        if changes > 0 && link.is_up() {
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

async fn forward(mut subscriber: async_nats::Subscriber, inbound: mpsc::Sender<Message>) {
    while let Some(message) = subscriber.next().await {
        if inbound.send(message).await.is_err() {
            return;
        }
    }
}
