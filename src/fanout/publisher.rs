//! `Publisher`: the cloneable handle producer threads publish through.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::event::{EncodedEvent, Event};
use crate::route::{validate_channel, SubjectError, SubjectLimits};

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The ingest queue is full (`try_publish` only); retry later or drop.
    Full,
    /// The relay has stopped.
    Closed,
    InvalidChannel(SubjectError),
    /// The event `type` is empty or longer than a channel may be.
    InvalidType,
    /// The data did not serialize, or the text given as JSON is not JSON.
    Json(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Full => f.write_str("the ingest queue is full"),
            PublishError::Closed => f.write_str("the relay has stopped"),
            PublishError::InvalidChannel(e) => write!(f, "invalid channel: {e}"),
            PublishError::InvalidType => f.write_str("invalid type: it must be 1 to 255 bytes"),
            PublishError::Json(e) => write!(f, "invalid JSON data: {e}"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Wakes the reactor at most once per burst of publishes.
pub(crate) struct Wakeup {
    waker: mio::Waker,
    /// Set by the first producer of a burst, cleared by the reactor before it
    /// drains; so a burst of N publishes costs one `eventfd` write.
    pending: AtomicBool,
}

impl Wakeup {
    pub fn new(waker: mio::Waker) -> Self {
        Wakeup {
            waker,
            pending: AtomicBool::new(false),
        }
    }

    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // A failed wake leaves the event queued for the next turn; the
            // reactor never sleeps longer than its timer tick with work pending.
            let _ = self.waker.wake();
        }
    }

    /// Wakes the reactor even if a wake is already pending (for shutdown).
    pub fn wake_now(&self) {
        self.pending.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }

    /// Called by the reactor before it drains the queue.
    pub fn clear(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

struct Shared {
    sender: Sender<EncodedEvent>,
    wakeup: Arc<Wakeup>,
    limits: SubjectLimits,
    closed: AtomicBool,
}

/// Publishes events into a relay. Cheap to clone; `Send` and `Sync`.
///
/// Data is serialized on the calling thread, so the reactor only copies bytes.
/// Events from one thread arrive in the order published; `seq` is assigned
/// by the reactor in the order events leave it.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("queued", &self.shared.sender.len())
            .finish()
    }
}

impl Publisher {
    pub(crate) fn new(
        capacity: usize,
        wakeup: Arc<Wakeup>,
        limits: SubjectLimits,
    ) -> (Publisher, Receiver<EncodedEvent>) {
        let (sender, receiver) = crossbeam_channel::bounded(capacity);
        let shared = Arc::new(Shared {
            sender,
            wakeup,
            limits,
            closed: AtomicBool::new(false),
        });
        (Publisher { shared }, receiver)
    }

    /// Publishes, waiting while the ingest queue is full.
    pub fn publish(&self, event: Event) -> Result<(), PublishError> {
        let encoded = self.prepare(event)?;
        self.shared
            .sender
            .send(encoded)
            .map_err(|_| PublishError::Closed)?;
        self.shared.wakeup.wake();
        Ok(())
    }

    /// Publishes if the ingest queue has room, else fails with `Full` at once.
    pub fn try_publish(&self, event: Event) -> Result<(), PublishError> {
        let encoded = self.prepare(event)?;
        let sent = self.shared.sender.try_send(encoded);
        match sent {
            Ok(()) => {
                self.shared.wakeup.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(PublishError::Full),
            Err(TrySendError::Disconnected(_)) => Err(PublishError::Closed),
        }
    }

    /// Events waiting for the reactor.
    pub fn queued(&self) -> usize {
        self.shared.sender.len()
    }

    /// Whether the ingest queue is full: new events would wait or fail.
    pub fn is_full(&self) -> bool {
        self.shared.sender.is_full()
    }

    fn prepare(&self, event: Event) -> Result<EncodedEvent, PublishError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        validate_event(&event, &self.shared.limits)?;
        Ok(event.encode(SystemTime::now()))
    }

    /// Refuses further events; called by the reactor as it stops.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

/// Checks what a subscriber relies on: a valid channel and a sane `type`.
pub(crate) fn validate_event(event: &Event, limits: &SubjectLimits) -> Result<(), PublishError> {
    validate_channel(event.channel(), limits).map_err(PublishError::InvalidChannel)?;
    match event.event_type() {
        Some(t) if t.is_empty() || t.len() > 255 => Err(PublishError::InvalidType),
        _ => Ok(()),
    }
}
