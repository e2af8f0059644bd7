//! The embedding API: build a relay, publish into it, run it, stop it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};

use crate::auth::Tokens;
use crate::config::Config;
use crate::error::Error;
use crate::fanout::delivery::Shaping;
use crate::fanout::history::{new_epoch, History};
use crate::fanout::publisher::Publisher;
use crate::fanout::sequencer::{Sequencer, Wakeup};
use crate::hooks::Hooks;
use crate::io::admission::Admission;
use crate::io::gather::Mailboxes;
use crate::io::reactor::{Reactor, ReactorParts, LISTENER, WAKER};
use crate::io::reload::TokenSlot;
use crate::stats::{StatsSet, StatsSnapshot};
use crate::upstream::Upstream;

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
    /// Each reactor is built on its own thread: its router shares match
    /// results through `Rc`, which never crosses threads.
    parts: Vec<ReactorParts>,
    addr: SocketAddr,
    publisher: Publisher,
    shared: Shared,
}

/// What a running relay's handle needs to see and stop every reactor.
struct Shared {
    sequencer: Arc<Sequencer>,
    stats: StatsSet,
    shutdown: Arc<AtomicBool>,
    tokens: Arc<TokenSlot>,
    /// Fleet mode's NATS thread, stopped after the reactors.
    upstream: Mutex<Option<Upstream>>,
}

impl Relay {
    /// Validates `config` and binds a listener per reactor (all on one
    /// port), so `local_addr` is known (port 0 picks a free port) before the
    /// reactors run.
    pub fn new(config: Config) -> Result<Relay, Error> {
        config.validate()?;
        let tls = config
            .tls
            .as_ref()
            .map(crate::io::tls::server_config)
            .transpose()?;
        warn_unsendable_tokens(&config);
        let tokens = Tokens::from_config(&config)?;
        let count = config.reactors.count();
        let listeners = bind_all(&config, count)?;
        let addr = listeners[0].local_addr()?;
        let stats = StatsSet::new(count);
        let mut polls = Vec::with_capacity(count);
        let mut wakeups = Vec::with_capacity(count);
        for mut listener in listeners {
            let poll = Poll::new()?;
            poll.registry()
                .register(&mut listener, LISTENER, Interest::READABLE)?;
            wakeups.push(Arc::new(Wakeup::new(Waker::new(poll.registry(), WAKER)?)));
            polls.push((poll, listener));
        }
        let history = History::new(&config.history, new_epoch());
        let sequencer = Arc::new(Sequencer::new(
            config.limits.ingest_capacity,
            wakeups,
            Arc::clone(&stats.relay),
            history,
            Shaping::new(&config),
        ));
        let upstream = config
            .upstream
            .as_ref()
            .map(|upstream| {
                Upstream::start(
                    upstream,
                    count,
                    &sequencer,
                    &stats.patterns,
                    config.subject_limits(),
                    &config.history,
                )
            })
            .transpose()?;
        let link = upstream.as_ref().map(|u| Arc::clone(&u.link));
        let publisher = Publisher::new(
            Arc::clone(&sequencer),
            config.subject_limits(),
            link.clone(),
        );
        let admission = Arc::new(Admission::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        ));
        let shutdown = Arc::new(AtomicBool::new(false));
        let tokens = Arc::new(TokenSlot::new(tokens));
        let mail = Arc::new(Mailboxes::new(count));
        let parts = polls
            .into_iter()
            .enumerate()
            .map(|(index, (poll, listener))| ReactorParts {
                index,
                config: config.clone(),
                poll,
                listener,
                sequencer: Arc::clone(&sequencer),
                admission: Arc::clone(&admission),
                shutdown: Arc::clone(&shutdown),
                stats: stats.clone(),
                tls: tls.clone(),
                token_slot: Arc::clone(&tokens),
                hooks: None,
                mail: Arc::clone(&mail),
                upstream: link.clone(),
            })
            .collect();
        Ok(Relay {
            parts,
            addr,
            publisher,
            shared: Shared {
                sequencer,
                stats,
                shutdown,
                tokens,
                upstream: Mutex::new(upstream),
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the embedder's rules for connections and subscriptions
    /// ([`Hooks`]). They are called on the reactor threads and must not
    /// block.
    pub fn hooks(mut self, hooks: impl Hooks) -> Relay {
        let hooks: Arc<dyn Hooks> = Arc::new(hooks);
        for part in &mut self.parts {
            part.hooks = Some(Arc::clone(&hooks));
        }
        self
    }

    /// A handle producer threads publish through; clone it freely.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Runs the reactors, each on a new thread.
    pub fn spawn(self) -> Result<RelayHandle, Error> {
        let Relay {
            parts,
            addr,
            publisher,
            shared,
        } = self;
        let mut threads = Vec::with_capacity(parts.len());
        for part in parts {
            let thread = std::thread::Builder::new()
                .name(format!("tidings-reactor-{}", part.index))
                .spawn(move || Reactor::new(part).run());
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // Stop the ones already running before reporting.
                    let _ = stop(&shared, threads);
                    return Err(e.into());
                }
            }
        }
        Ok(RelayHandle {
            threads,
            addr,
            publisher,
            shared,
        })
    }

    /// Runs the reactors, the first on the calling thread. Nothing can stop
    /// them but the end of the process or a fatal error; use `spawn` to be
    /// able to.
    pub fn run(mut self) -> Result<(), Error> {
        let first = self.parts.remove(0);
        let handle = self.spawn()?;
        let result = Reactor::new(first).run();
        drop(handle);
        result
    }
}

/// RFC 6455 requires a subprotocol to be an HTTP token (RFC 7230 `tchar`),
/// so browsers (and Python `websockets`) refuse to send a token with `/` or
/// `=` in `Sec-WebSocket-Protocol`, as base64 makes. Say so at startup,
/// without showing the token.
fn warn_unsendable_tokens(config: &Config) {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    for (i, token) in config.auth.tokens.iter().enumerate() {
        if !token.token.bytes().all(tchar) {
            tracing::warn!(
                "auth.tokens[{i}] has characters a browser cannot send as the Bearer \
                 subprotocol (allowed: letters, digits and !#$%&'*+-.^_`|~); clients must \
                 use the auth message or Authorization: Bearer, or pick such a token"
            );
        }
    }
}

/// One listener per reactor on one port, each with `SO_REUSEPORT`: the
/// kernel spreads new connections over them by a hash of their addresses
/// (no acceptor thread, and a reactor never waits on another to get a
/// socket; BENCHMARKS.md reports how evenly they spread). The same option
/// lets a new relay, run by the same user, join the port while this one
/// stops: the zero-downtime restart of docs/operations.md. A port held by
/// another program without it still fails to bind.
fn bind_all(config: &Config, count: usize) -> Result<Vec<TcpListener>, Error> {
    let first = bind(config.listen, config.limits.listen_backlog).map_err(|e| Error::Bind {
        addr: config.listen,
        error: e,
    })?;
    // Port 0 picks a free port once; the others join it.
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        let listener =
            bind(addr, config.limits.listen_backlog).map_err(|e| Error::Bind { addr, error: e })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A non-blocking listener with our backlog (mio's own `bind` uses 128),
/// joining the port's `SO_REUSEPORT` group.
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Restart without waiting out TIME_WAIT from the previous run.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A running relay. Dropping it shuts the relay down.
pub struct RelayHandle {
    threads: Vec<JoinHandle<Result<(), Error>>>,
    addr: SocketAddr,
    publisher: Publisher,
    shared: Shared,
}

impl RelayHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The relay's counters, summed over its reactors.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Each reactor's own counters, by reactor index (events published are
    /// counted once per relay, in `stats`, not here).
    pub fn reactor_stats(&self) -> Vec<StatsSnapshot> {
        self.shared.stats.per_reactor()
    }

    /// Replaces the relay's tokens with those of `config`, without dropping
    /// a connection: the client tokens (`auth.tokens`, with their
    /// `channels`) and the publish tokens (`publish.tokens`). Nothing else
    /// in `config` is applied; it is validated whole all the same, so a
    /// file that would not start a relay changes nothing.
    ///
    /// Every reactor takes the new set at its next turn. WebSockets whose
    /// token is no longer configured, or whose token no longer covers a
    /// pattern they hold, are closed with 4001 and a reason saying which;
    /// with client tokens configured where there were none, sockets that
    /// never authenticated are closed with 4001 too. HTTP requests are
    /// checked against the new set from then on.
    pub fn reload_auth(&self, config: &Config) -> Result<(), Error> {
        config.validate()?;
        warn_unsendable_tokens(config);
        self.shared.tokens.replace(Tokens::from_config(config)?);
        self.shared.sequencer.wake_all_now();
        Ok(())
    }

    /// Closes every WebSocket on every reactor with 1001, waits for the
    /// reactors to finish (at most about `timeouts.close_linger`), and
    /// reports how they ended: the first error, if any.
    pub fn shutdown(mut self) -> Result<(), Error> {
        let threads = std::mem::take(&mut self.threads);
        stop(&self.shared, threads)
    }
}

fn stop(shared: &Shared, threads: Vec<JoinHandle<Result<(), Error>>>) -> Result<(), Error> {
    if threads.is_empty() {
        return Ok(());
    }
    shared.shutdown.store(true, Ordering::Release);
    shared.sequencer.close();
    shared.sequencer.wake_all_now();
    let mut result = Ok(());
    for thread in threads {
        let ended = thread.join().unwrap_or_else(|_| {
            Err(Error::Io(std::io::Error::other(
                "a reactor thread panicked",
            )))
        });
        if result.is_ok() {
            result = ended;
        }
    }
    if let Some(mut upstream) = shared.upstream.lock().ok().and_then(|mut u| u.take()) {
        upstream.stop();
    }
    result
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        let threads = std::mem::take(&mut self.threads);
        let _ = stop(&self.shared, threads);
    }
}
