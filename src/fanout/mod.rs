//! Events, their shared frames, the per-socket queues, and the producer handle.

pub mod coalesce;
pub mod event;
pub mod publisher;
pub mod queue;
