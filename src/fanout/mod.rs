//! Events, their shared frames, the sequencer that orders them, the
//! per-socket queues, and the producer handle.

pub mod coalesce;
pub mod delivery;
pub mod event;
pub mod history;
pub mod publisher;
pub mod queue;
pub mod sequencer;
