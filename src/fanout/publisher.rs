//! `Publisher`: the cloneable handle producer threads publish through.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::event::{EncodedEvent, Event};
use super::sequencer::{AppendError, Sequencer};
use crate::route::{validate_channel, SubjectError, SubjectLimits};
use crate::upstream::link::UpstreamLink;
use crate::upstream::Refused;

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The relay is `limits.ingest_capacity` events behind (`try_publish`
    /// only); retry later or drop.
    Full,
    /// The relay has stopped.
    Closed,
    /// Fleet mode: NATS is unreachable, or did not take the event within
    /// `upstream.publish_timeout`.
    Unavailable,
    InvalidChannel(SubjectError),
    /// The event `type` is empty or longer than a channel may be.
    InvalidType,
    /// The data did not serialize, or the text given as JSON is not JSON.
    Json(String),
    /// The event's `type` (its channel, unless set) is one the relay's own
    /// replies use: a client would take it for one.
    ReservedType(String),
}

/// The `type`s of the relay's own messages. An event may not carry one
/// (`{"type":"error"}` from a channel named `error` would read as an error
/// reply); later message types join this list.
pub const RESERVED_TYPES: &[&str] = &[
    "subscribed",
    "unsubscribed",
    "pong",
    "error",
    "authenticated",
    "resync",
    "refresh_required",
    "refreshed",
];

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Full => f.write_str("the relay is saturated (limits.ingest_capacity)"),
            PublishError::Closed => f.write_str("the relay has stopped"),
            PublishError::Unavailable => f.write_str("NATS (upstream) is unreachable; retry later"),
            PublishError::InvalidChannel(e) => write!(f, "invalid channel: {e}"),
            PublishError::InvalidType => f.write_str("invalid type: it must be 1 to 255 bytes"),
            PublishError::Json(e) => write!(f, "invalid JSON data: {e}"),
            PublishError::ReservedType(t) => write!(
                f,
                "type {t:?} is reserved for the relay's own messages; set another type or use another channel"
            ),
        }
    }
}

impl std::error::Error for PublishError {}

struct Shared {
    sequencer: Arc<Sequencer>,
    limits: SubjectLimits,
    /// Fleet mode: events go to NATS, and come back through the sequencer.
    upstream: Option<Arc<UpstreamLink>>,
}

/// Publishes events into a relay. Cheap to clone; `Send` and `Sync`.
///
/// Data is serialized on the calling thread; the sequencer then gives the
/// event its `seq` and frame once, for every reactor. Events from one thread
/// arrive in the order published, and every subscriber sees all events in
/// one order, whichever thread or HTTP request published them.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("queued", &self.queued())
            .finish()
    }
}

impl Publisher {
    pub(crate) fn new(
        sequencer: Arc<Sequencer>,
        limits: SubjectLimits,
        upstream: Option<Arc<UpstreamLink>>,
    ) -> Publisher {
        Publisher {
            shared: Arc::new(Shared {
                sequencer,
                limits,
                upstream,
            }),
        }
    }

    /// Publishes, waiting while the relay is `limits.ingest_capacity` events
    /// behind. Returns the event's `seq`.
    ///
    /// In fleet mode (`[upstream]`) the event goes to NATS: this waits while
    /// `upstream.publish_capacity` events are queued for it (at most
    /// `upstream.publish_timeout`) and returns 0, since each relay gives the
    /// event its own `seq` when NATS delivers it back.
    pub fn publish(&self, event: Event) -> Result<u64, PublishError> {
        let encoded = self.prepare(event)?;
        if let Some(upstream) = &self.shared.upstream {
            return publish_upstream(upstream, encoded, true);
        }
        self.shared
            .sequencer
            .append_waiting(encoded)
            .map_err(PublishError::from)
    }

    /// Publishes if the relay has room, else fails with `Full` at once.
    /// Returns the event's `seq`.
    pub fn try_publish(&self, event: Event) -> Result<u64, PublishError> {
        let encoded = self.prepare(event)?;
        if let Some(upstream) = &self.shared.upstream {
            return publish_upstream(upstream, encoded, false);
        }
        self.shared
            .sequencer
            .try_append(&mut vec![encoded])
            .map_err(PublishError::from)
    }

    /// Events published but not yet taken by every reactor.
    pub fn queued(&self) -> usize {
        self.shared.sequencer.unread()
    }

    /// Whether new events would wait (`publish`) or fail (`try_publish`).
    pub fn is_full(&self) -> bool {
        match &self.shared.upstream {
            Some(upstream) => upstream.is_full(),
            None => self.shared.sequencer.is_full(),
        }
    }

    fn prepare(&self, event: Event) -> Result<EncodedEvent, PublishError> {
        validate_event(&event, &self.shared.limits)?;
        Ok(event.encode_shaped(SystemTime::now(), self.shared.sequencer.shaping()))
    }
}

/// Hands an event to the upstream thread; `wait`s (briefly polling) while
/// its queue is full, as `publish` waits for the sequencer.
fn publish_upstream(
    upstream: &UpstreamLink,
    event: EncodedEvent,
    wait: bool,
) -> Result<u64, PublishError> {
    let waited = Instant::now();
    let mut event = Some(event);
    loop {
        let taken = event.take().expect("bug: the event is put back on Full");
        match upstream.submit_embedded(taken) {
            Ok(()) => return Ok(0),
            Err((Refused::Down, _)) => return Err(PublishError::Unavailable),
            Err((Refused::Full, _)) if !wait => return Err(PublishError::Full),
            Err((Refused::Full, back)) => {
                if waited.elapsed() > upstream.publish_timeout() {
                    return Err(PublishError::Unavailable);
                }
                event = Some(back);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl From<AppendError> for PublishError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Full => PublishError::Full,
            AppendError::Closed => PublishError::Closed,
        }
    }
}

/// Checks what a subscriber relies on: a valid channel and a sane `type`.
pub(crate) fn validate_event(event: &Event, limits: &SubjectLimits) -> Result<(), PublishError> {
    validate_channel(event.channel(), limits).map_err(PublishError::InvalidChannel)?;
    let wire_type = match event.event_type() {
        Some(t) if t.is_empty() || t.len() > 255 => return Err(PublishError::InvalidType),
        Some(t) => t,
        None => event.channel(),
    };
    if RESERVED_TYPES.contains(&wire_type) {
        return Err(PublishError::ReservedType(wire_type.to_string()));
    }
    Ok(())
}
