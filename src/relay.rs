//! The embedding API: build a relay, publish into it, run it, stop it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};

use crate::config::Config;
use crate::error::Error;
use crate::fanout::publisher::{Publisher, Wakeup};
use crate::io::reactor::{Reactor, ReactorParts, LISTENER, WAKER};
use crate::stats::{Stats, StatsSnapshot};

/// A relay that is bound but not yet running.
///
/// ```no_run
/// let mut config = tidings::Config::default();
/// config.listen = "127.0.0.1:0".parse().unwrap();
/// let relay = tidings::Relay::new(config)?;
/// let publisher = relay.publisher();
/// let handle = relay.spawn()?;
/// publisher.publish(tidings::Event::new("job.progress", &serde_json::json!({"progress": 0.5}))?)?;
/// handle.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Relay {
    /// The reactor is built on its own thread: its router shares match
    /// results through `Rc`, which never crosses threads.
    parts: ReactorParts,
    addr: SocketAddr,
    publisher: Publisher,
    stats: Arc<Stats>,
    shutdown: Arc<AtomicBool>,
    wakeup: Arc<Wakeup>,
}

impl Relay {
    /// Validates `config` and binds the listener, so `local_addr` is known
    /// (port 0 picks a free port) before the reactor runs.
    pub fn new(config: Config) -> Result<Relay, Error> {
        config.validate()?;
        let tls = config
            .tls
            .as_ref()
            .map(crate::io::tls::server_config)
            .transpose()?;
        let poll = Poll::new()?;
        let mut listener =
            bind(config.listen, config.limits.listen_backlog).map_err(|e| Error::Bind {
                addr: config.listen,
                error: e,
            })?;
        let addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let wakeup = Arc::new(Wakeup::new(Waker::new(poll.registry(), WAKER)?));
        let (publisher, ingest) = Publisher::new(
            config.limits.ingest_capacity,
            Arc::clone(&wakeup),
            config.subject_limits(),
        );
        let stats = Arc::new(Stats::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let parts = ReactorParts {
            config,
            poll,
            listener,
            ingest,
            wakeup: Arc::clone(&wakeup),
            publisher: publisher.clone(),
            shutdown: Arc::clone(&shutdown),
            stats: Arc::clone(&stats),
            tls,
        };
        Ok(Relay {
            parts,
            addr,
            publisher,
            stats,
            shutdown,
            wakeup,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle producer threads publish through; clone it freely.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Runs the reactor on a new thread.
    pub fn spawn(self) -> Result<RelayHandle, Error> {
        let Relay {
            parts,
            addr,
            publisher,
            stats,
            shutdown,
            wakeup,
        } = self;
        let thread = std::thread::Builder::new()
            .name("tidings-reactor".into())
            .spawn(move || Reactor::new(parts).run())?;
        Ok(RelayHandle {
            thread: Some(thread),
            addr,
            publisher,
            stats,
            shutdown,
            wakeup,
        })
    }

    /// Runs the reactor on the calling thread. Nothing can stop it but the
    /// end of the process or a fatal error; use `spawn` to be able to.
    pub fn run(self) -> Result<(), Error> {
        Reactor::new(self.parts).run()
    }
}

/// A non-blocking listener with our backlog (mio's own `bind` uses 128).
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Restart without waiting out TIME_WAIT from the previous run.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A running relay. Dropping it shuts the relay down.
pub struct RelayHandle {
    thread: Option<JoinHandle<Result<(), Error>>>,
    addr: SocketAddr,
    publisher: Publisher,
    stats: Arc<Stats>,
    shutdown: Arc<AtomicBool>,
    wakeup: Arc<Wakeup>,
}

impl RelayHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Closes every WebSocket with 1001, waits for the reactor to finish
    /// (at most about `timeouts.close_linger`), and reports how it ended.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shutdown.store(true, Ordering::Release);
        self.wakeup.wake_now();
        match thread.join() {
            Ok(result) => result,
            Err(_) => Err(Error::Io(std::io::Error::other(
                "the reactor thread panicked",
            ))),
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
