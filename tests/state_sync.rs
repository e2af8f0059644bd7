//! State sync over real sockets: the position in every `subscribed` reply,
//! resume with `since` (across reactors, under a publish burst, within a
//! token's scope), each `recovered:false` reason, snapshots of last values,
//! the REST reads, and the `resync` slow-consumer policy.
//!
//! Seqs are checked exactly: each test publishes through the embedding API,
//! which returns the seq it assigned, so every expected event is known by
//! its seq and a gap or a duplicate anywhere fails the comparison.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tidings::{Config, Event, SlowConsumerPolicy, StatsSnapshot, TokenConfig};

/// Upper bound on messages read while waiting for a sentinel, so a relay
/// that loops on output fails the test instead of hanging it.
const MAX_READ: usize = 100_000;

// ---------------------------------------------------------------------------
// Helpers

/// Publishes through the embedding API and returns the seq the relay gave it.
fn publish(relay: &TestRelay, channel: &str, data: Value) -> u64 {
    let event = Event::new(channel, &data).expect("Event::new");
    relay.publisher.publish(event).expect("Publisher::publish")
}

/// An event a test expects on the wire: channel, data and seq.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    channel: String,
    data: Value,
    seq: u64,
}

impl Expected {
    fn new(channel: &str, data: Value, seq: u64) -> Expected {
        Expected {
            channel: channel.to_string(),
            data,
            seq,
        }
    }
}

/// Publishes and returns what subscribers should see.
fn emit(relay: &TestRelay, channel: &str, data: Value) -> Expected {
    let seq = publish(relay, channel, data.clone());
    Expected::new(channel, data, seq)
}

/// Reads events until the sentinel (`data.sentinel == true` on `channel`),
/// which is included. Every read is bounded by [`WAIT`].
fn read_through_sentinel(client: &mut Client, channel: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        assert!(got.len() < MAX_READ, "no sentinel in {MAX_READ} messages");
        let v = client.next_json();
        let done = v["type"] == channel && v["data"]["sentinel"] == true;
        got.push(v);
        if done {
            return got;
        }
    }
}

/// Asserts the messages are exactly `want`, in order: same channels, data
/// and seqs, nothing missing, nothing extra, nothing twice.
fn assert_events(got: &[Value], want: &[Expected], what: &str) {
    let seen: Vec<Expected> = got
        .iter()
        .map(|v| {
            let channel = v["type"].as_str().unwrap_or("<no type>");
            let seq = event_seq(v, channel);
            Expected::new(channel, v["data"].clone(), seq)
        })
        .collect();
    assert_eq!(
        seen, want,
        "{what}: received events differ from the expected ones"
    );
}

/// A `subscribe` with `since` (and optionally `snapshot`).
fn resume_command(channels: &[&str], epoch: &str, seq: u64, snapshot: bool) -> Value {
    let mut command = json!({
        "type": "subscribe",
        "channels": channels,
        "since": {"epoch": epoch, "seq": seq},
    });
    if snapshot {
        command["snapshot"] = json!(true);
    }
    command
}

/// Checks a `subscribed` reply to a resume that recovered; returns its seq.
fn assert_recovered(reply: &Value, channels: &[&str], epoch: &str) -> u64 {
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["channels"], json!(channels), "{reply}");
    assert_eq!(reply["epoch"], epoch, "{reply}");
    assert_eq!(
        reply["recovered"], true,
        "expected a recovered resume: {reply}"
    );
    assert!(reply.get("reason").is_none(), "{reply}");
    assert_eq!(reply.as_object().map_or(0, |o| o.len()), 5, "{reply}");
    reply["seq"].as_u64().expect("subscribed carries seq")
}

/// Checks a `subscribed` reply to a resume that did not recover.
fn assert_not_recovered(reply: &Value, channels: &[&str], epoch: &str, reason: &str) -> u64 {
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["channels"], json!(channels), "{reply}");
    assert_eq!(reply["epoch"], epoch, "{reply}");
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["reason"], reason, "{reply}");
    assert_eq!(reply.as_object().map_or(0, |o| o.len()), 6, "{reply}");
    reply["seq"].as_u64().expect("subscribed carries seq")
}

/// Subscribes plainly; returns the reply's (epoch, seq).
fn subscribe_at(client: &mut Client, channels: &[&str]) -> (String, u64) {
    let reply = client.request(&json!({"type": "subscribe", "channels": channels}));
    let seq = assert_subscribed(&reply, channels);
    (reply["epoch"].as_str().expect("epoch").to_string(), seq)
}

/// Which reactor took the newest socket: the one whose `accepted` count went
/// up (monotonic, so sockets closing meanwhile cannot hide it).
fn reactor_of_new_socket(before: &[StatsSnapshot], relay: &TestRelay) -> usize {
    let after = relay.reactor_stats();
    let grew: Vec<usize> = (0..after.len())
        .filter(|&i| after[i].accepted > before[i].accepted)
        .collect();
    assert_eq!(grew.len(), 1, "one new socket: {before:?} -> {after:?}");
    grew[0]
}

/// Connects (with an optional `Sec-WebSocket-Protocol`) and says which
/// reactor took the socket.
fn connect_located(relay: &TestRelay, protocol: Option<&str>) -> (Client, usize) {
    let before = relay.reactor_stats();
    let client = try_connect(relay.addr, protocol).expect("WebSocket upgrade");
    (client, reactor_of_new_socket(&before, relay))
}

/// Connects until a socket lands on reactor `want` (the kernel spreads them
/// by a hash of the ports); the others are kept open in `spare` so that
/// they do not change the counts while we look. Bounded: 64 misses in a
/// row on two reactors happen once in 2^64 runs.
fn connect_to_reactor(
    relay: &TestRelay,
    want: usize,
    protocol: Option<&str>,
    spare: &mut Vec<Client>,
) -> Client {
    for _ in 0..64 {
        let (client, reactor) = connect_located(relay, protocol);
        if reactor == want {
            return client;
        }
        spare.push(client);
    }
    panic!("no socket landed on reactor {want} in 64 attempts");
}

/// The reactor after `reactor` (itself when there is only one).
fn other_reactor(relay: &TestRelay, reactor: usize) -> usize {
    (reactor + 1) % relay.reactor_stats().len()
}

fn with_auth(c: &mut Config, tokens: &[(&str, Option<&[&str]>)]) {
    c.auth.tokens = tokens
        .iter()
        .map(|(token, channels)| TokenConfig {
            token: token.to_string(),
            channels: channels.map(|list| list.iter().map(|p| p.to_string()).collect()),
        })
        .collect();
}

fn bearer(token: &str) -> String {
    format!("Bearer, {token}")
}

/// Makes sure the reactor holding `client` has fanned out every event
/// published so far (the relay fans out asynchronously): the client
/// subscribes to a private channel, waits for an event published there
/// now, and unsubscribes. Only for clients whose other subscriptions get
/// no events meanwhile.
fn barrier(relay: &TestRelay, client: &mut Client) {
    const CHANNEL: &str = "zz.barrier";
    client.subscribe(&[CHANNEL]);
    let seq = publish(relay, CHANNEL, json!({"barrier": true}));
    assert_eq!(event_seq(&client.next_json(), CHANNEL), seq, "barrier");
    client.unsubscribe(&[CHANNEL]);
}

// ---------------------------------------------------------------------------
// 1. Resume after a cut, on wildcards, on the other reactor

#[test]
fn resume_on_the_other_reactor_replays_the_gap_on_wildcards_then_goes_live() {
    const PATTERNS: [&str; 2] = ["job.*", "index.>"];
    let relay = TestRelay::start();
    let mut spare = Vec::new();
    let (mut first, first_reactor) = connect_located(&relay, None);
    let (epoch, s0) = subscribe_at(&mut first, &PATTERNS);

    // Before the cut: matching events arrive; the others do not.
    let mut before = vec![emit(&relay, "job.started", json!({"n": 0}))];
    publish(&relay, "job.a.b", json!({"no": "two segments under job"}));
    before.push(emit(&relay, "index.prod.shard", json!({"n": 1})));
    publish(&relay, "index", json!({"no": "index.> needs a segment"}));
    before.push(emit(
        &relay,
        "job.progress",
        json!({"n": 2, "sentinel": true}),
    ));
    let got = read_through_sentinel(&mut first, "job.progress");
    assert_events(&got, &before, "before the cut");
    assert!(
        before[0].seq > s0,
        "live event at or before the reply's seq"
    );
    let last_seen = before.last().unwrap().seq;
    publish(&relay, "other.thing", json!({"no": "after the last seen"}));
    drop(first); // the cut: no close handshake

    // The gap: matching and non-matching events, interleaved.
    let mut gap = Vec::new();
    gap.push(emit(&relay, "job.progress", json!({"n": 3})));
    publish(&relay, "jobs.progress", json!({"no": "jobs is not job"}));
    gap.push(emit(&relay, "index.a.b.c", json!({"n": 4})));
    publish(&relay, "job.x.y", json!({"no": 5}));
    publish(&relay, "index", json!({"no": 6}));
    publish(&relay, "other.y", json!({"no": 7}));
    gap.push(emit(&relay, "job.done", json!({"n": 8})));
    gap.push(emit(&relay, "index.z", json!({"n": 9})));
    publish(&relay, "jobx.done", json!({"no": 10}));

    // Resume from a socket on the other reactor.
    let target = other_reactor(&relay, first_reactor);
    let mut second = connect_to_reactor(&relay, target, None, &mut spare);
    let replayed_before = relay.stats().replayed;
    let reply = second.request(&resume_command(&PATTERNS, &epoch, last_seen, false));
    let s1 = assert_recovered(&reply, &PATTERNS, &epoch);
    assert!(s1 >= last_seen, "position {s1} before since {last_seen}");

    // Then live events, then a sentinel: the whole stream must be the gap's
    // matching events and the live ones, in seq order, each once.
    let mut want = gap.clone();
    want.push(emit(&relay, "index.live.one", json!({"n": 11})));
    publish(&relay, "misc", json!({"no": 12}));
    want.push(emit(&relay, "job.live", json!({"n": 13})));
    want.push(emit(&relay, "job.end", json!({"sentinel": true})));
    let got = read_through_sentinel(&mut second, "job.end");
    assert_events(&got, &want, "replay then live");
    // What came with seq <= the reply's position came from the history
    // (counted), the rest live.
    let from_history = want.iter().filter(|e| e.seq <= s1).count() as u64;
    assert!(
        from_history >= 1,
        "the reactor was caught up to since={last_seen}, so the replay cannot be empty"
    );
    let replayed = relay.stats().replayed - replayed_before;
    assert_eq!(replayed, from_history, "replayed counter vs events <= {s1}");
    second.assert_alive();
}

// ---------------------------------------------------------------------------
// 2. Each recovered:false reason

#[test]
fn resume_from_another_epoch_is_not_recovered_and_replays_nothing() {
    let relay = TestRelay::start();
    let mut witness = connect(relay.addr);
    let (epoch, _) = subscribe_at(&mut witness, &["e.x"]);
    let mut newest = 0;
    for n in 0..5 {
        newest = publish(&relay, "e.x", json!({"n": n}));
    }
    // A made-up epoch of the right shape, and one of another shape.
    let made_up = if epoch == "0000000000zz" {
        "0000000000yy"
    } else {
        "0000000000zz"
    };
    for fake in [made_up, "not-an-epoch"] {
        let mut client = connect(relay.addr);
        let reply = client.request(&resume_command(&["e.x"], fake, 2, false));
        let s = assert_not_recovered(&reply, &["e.x"], &epoch, "epoch");
        assert!(s <= newest, "{reply}");
        // Subscribed all the same: the next event is live, nothing before it.
        let live = emit(&relay, "e.x", json!({"sentinel": true}));
        let got = read_through_sentinel(&mut client, "e.x");
        let stale: Vec<&Value> = got
            .iter()
            .filter(|v| v["seq"].as_u64() <= Some(s))
            .collect();
        assert!(
            stale.is_empty(),
            "events at or before the reply's seq: {stale:?}"
        );
        assert_eq!(got.last().map(|v| &v["seq"]), Some(&json!(live.seq)));
        newest = live.seq;
    }
}

#[test]
fn resume_past_the_history_is_gone() {
    let relay = TestRelay::with(|c| c.history.max_events = 5);
    let mut client = connect(relay.addr);
    let (epoch, _) = subscribe_at(&mut client, &["g.x"]);
    let seqs: Vec<u64> = (0..12)
        .map(|n| publish(&relay, "g.x", json!({"n": n})))
        .collect();
    let newest = *seqs.last().unwrap();
    let got: Vec<Value> = (0..seqs.len()).map(|_| client.next_json()).collect();
    assert_eq!(got.last().unwrap()["seq"], newest);

    // The ring holds the last 5 events: since = newest - 5 still recovers
    // all of them; one further back, an event after since is gone.
    // (A reactor behind sends the rest live, in the same order.)
    let mut ok = connect(relay.addr);
    let reply = ok.request(&resume_command(&["g.x"], &epoch, newest - 5, false));
    assert_recovered(&reply, &["g.x"], &epoch);
    let replay: Vec<u64> = (0..5)
        .map(|_| ok.next_json()["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(replay, seqs[seqs.len() - 5..], "the last five, in order");

    for since in [0, 1, newest - 6] {
        let mut late = connect(relay.addr);
        let reply = late.request(&resume_command(&["g.x"], &epoch, since, false));
        assert_not_recovered(&reply, &["g.x"], &epoch, "gone");
        late.assert_alive(); // nothing replayed before the pong
    }
    // A seq never assigned is from elsewhere: gone, not an empty replay.
    let mut future = connect(relay.addr);
    let reply = future.request(&resume_command(&["g.x"], &epoch, newest + 100, false));
    assert_not_recovered(&reply, &["g.x"], &epoch, "gone");
    future.assert_alive();
    // since = newest: recovered with nothing to replay.
    let mut current = connect(relay.addr);
    let reply = current.request(&resume_command(&["g.x"], &epoch, newest, false));
    assert_recovered(&reply, &["g.x"], &epoch);
    current.assert_alive();
}

#[test]
fn resume_with_too_many_events_is_too_many_and_the_boundary_recovers() {
    let relay = TestRelay::with(|c| c.history.max_replay = 3);
    let mut client = connect(relay.addr);
    let (epoch, start) = subscribe_at(&mut client, &["t.*"]);
    // Three matching events among non-matching ones: exactly max_replay.
    let mut want = Vec::new();
    for n in 0..3 {
        publish(&relay, "u.x", json!({"noise": n}));
        want.push(emit(&relay, "t.x", json!({"n": n})));
    }
    let mut boundary = connect(relay.addr);
    barrier(&relay, &mut boundary);
    let reply = boundary.request(&resume_command(&["t.*"], &epoch, start, false));
    assert_recovered(&reply, &["t.*"], &epoch);
    let got: Vec<Value> = want.iter().map(|_| boundary.next_json()).collect();
    assert_events(&got, &want, "max_replay events");
    boundary.assert_alive();

    // One more matching event: more than max_replay.
    want.push(emit(&relay, "t.y", json!({"n": 3})));
    let mut over = connect(relay.addr);
    barrier(&relay, &mut over);
    let reply = over.request(&resume_command(&["t.*"], &epoch, start, false));
    assert_not_recovered(&reply, &["t.*"], &epoch, "too_many");
    // Subscribed, nothing replayed: the next message is live.
    let live = emit(&relay, "t.z", json!({"sentinel": true}));
    let got = read_through_sentinel(&mut over, "t.z");
    assert_events(&got, &[live], "after too_many");
}

#[test]
fn a_replay_larger_than_the_queue_limits_is_still_sent_whole() {
    // A client resuming after a `resync` missed at least a full queue, so
    // a replay may go past the queue limits (docs/protocol.md): bounded by
    // history.max_replay, its frames shared with the history.
    let relay = TestRelay::with(|c| {
        c.history.max_replay = 10_000;
        c.limits.max_queue_messages = 16;
        c.limits.max_queue_bytes = 4 * 1024;
    });
    let mut client = connect(relay.addr);
    let (epoch, start) = subscribe_at(&mut client, &["q.x"]);
    let pad = "q".repeat(200);
    let seqs: Vec<u64> = (0..40)
        .map(|n| publish(&relay, "q.x", json!({"n": n, "pad": pad})))
        .collect();
    let mut resumer = connect(relay.addr);
    barrier(&relay, &mut resumer);
    let reply = resumer.request(&resume_command(&["q.x"], &epoch, start, false));
    assert_recovered(&reply, &["q.x"], &epoch);
    for (n, seq) in seqs.iter().enumerate() {
        let event = resumer.next_json();
        assert_eq!(event["seq"], *seq, "{event}");
        assert_eq!(event["data"]["n"], n, "{event}");
    }
    resumer.assert_alive();
    assert_eq!(relay.stats().slow_consumer_closes, 0);
}

// ---------------------------------------------------------------------------
// 3. Replay-to-live hand-over under a concurrent burst

#[test]
fn cut_and_resume_during_a_publish_burst_gets_every_event_once_in_order() {
    const BURST: u64 = 3000;
    let relay = TestRelay::with(|c| {
        // Room for any gap the cuts below can leave.
        c.history.max_replay = 10_000;
        c.limits.max_queue_messages = 10_000;
        c.limits.max_queue_bytes = 8 * 1024 * 1024;
    });
    let mut client = connect(relay.addr);
    let (epoch, mut position) = subscribe_at(&mut client, &["burst.*"]);

    let (seqs_tx, seqs_rx) = mpsc::channel();
    let publisher = relay.publisher.clone();
    let producer = thread::spawn(move || {
        let mut seqs = Vec::with_capacity(BURST as usize);
        for i in 0..BURST {
            if i % 3 == 0 {
                let noise = Event::new("noise.x", &json!({"i": i})).expect("event");
                publisher.publish(noise).expect("publish");
            }
            let event = Event::new("burst.n", &json!({"i": i})).expect("event");
            seqs.push(publisher.publish(event).expect("publish"));
            // Spread the burst so that the cuts below fall inside it.
            if i % 8 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        seqs_tx.send(seqs).expect("send seqs");
    });

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut received: Vec<(u64, u64)> = Vec::with_capacity(BURST as usize);
    let (mut cuts, mut recovered_replays) = (0, 0);
    // Cut after a varying number of events; sometimes right after the reply.
    let plan = [137, 0, 311, 52, 0, 400, 7, 233];
    'outer: loop {
        let take = plan[cuts % plan.len()];
        for _ in 0..take {
            if received.last().is_some_and(|&(i, _)| i == BURST - 1) {
                break 'outer;
            }
            assert!(Instant::now() < deadline, "burst not received in time");
            let v = client.next_json();
            let seq = event_seq(&v, "burst.n");
            let i = v["data"]["i"].as_u64().expect("data.i");
            received.push((i, seq));
        }
        if received.last().is_some_and(|&(i, _)| i == BURST - 1) {
            break;
        }
        // Cut, reconnect (any reactor) and resume from the last seq seen.
        drop(client);
        cuts += 1;
        let since = received.last().map_or(position, |&(_, seq)| seq);
        client = connect(relay.addr);
        let reply = client.request(&resume_command(&["burst.*"], &epoch, since, false));
        position = assert_recovered(&reply, &["burst.*"], &epoch);
        if position > since {
            recovered_replays += 1;
        }
    }
    let seqs = seqs_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("producer finished");
    producer.join().expect("producer thread");
    eprintln!("{cuts} cuts, {recovered_replays} resumes with events to replay");
    assert!(cuts >= 5, "only {cuts} cuts: the test resumed too little");

    let is: Vec<u64> = received.iter().map(|&(i, _)| i).collect();
    let want: Vec<u64> = (0..BURST).collect();
    if is != want {
        let dups = is.windows(2).filter(|w| w[1] <= w[0]).count();
        let gaps = is.windows(2).filter(|w| w[1] > w[0] + 1).count();
        panic!(
            "received {} events, {dups} out of order or repeated, {gaps} gaps; first bad at {:?}",
            is.len(),
            is.iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .map(|p| &received[p.saturating_sub(2)..(p + 3).min(received.len())])
        );
    }
    for &(i, seq) in &received {
        assert_eq!(seq, seqs[i as usize], "event {i} arrived with another seq");
    }
    client.assert_alive();
}

// ---------------------------------------------------------------------------
// 4. Token scope during a replay

const ALL: &str = "sync-all-51c2";
const NARROW: &str = "sync-narrow-a80d";
const NARROW_SCOPE: [&str; 2] = ["job.public.*", "index.open.>"];

#[test]
fn a_resume_never_delivers_events_outside_the_token_scope() {
    let relay = TestRelay::with(|c| {
        with_auth(c, &[(ALL, None), (NARROW, Some(&NARROW_SCOPE))]);
        c.history.last_value = vec!["job.>".into(), "index.>".into()];
    });
    let mut spare = Vec::new();
    let (mut narrow, narrow_reactor) = connect_located(&relay, Some(&bearer(NARROW)));
    let (epoch, _) = subscribe_at(&mut narrow, &NARROW_SCOPE);
    let seen = emit(&relay, "job.public.a", json!({"sentinel": true}));
    let got = read_through_sentinel(&mut narrow, "job.public.a");
    assert_events(&got, std::slice::from_ref(&seen), "before the cut");
    drop(narrow);

    // The gap: events in and out of the narrow scope.
    let mut in_scope = Vec::new();
    let mut everything = Vec::new();
    for (channel, allowed) in [
        ("job.public.b", true),
        ("job.secret.a", false),
        ("index.open.x.y", true),
        ("index.closed.z", false),
        ("job.public.c.d", false),
        ("job.publicx", false),
        ("index.open.q", true),
    ] {
        let e = emit(&relay, channel, json!({"c": channel}));
        if allowed {
            in_scope.push(e.clone());
        }
        everything.push(e);
    }

    // The wide token shows the out-of-scope events are in the history.
    let mut wide = try_connect(relay.addr, Some(&bearer(ALL))).expect("upgrade");
    let reply = wide.request(&resume_command(
        &["job.>", "index.>"],
        &epoch,
        seen.seq,
        false,
    ));
    assert_recovered(&reply, &["job.>", "index.>"], &epoch);
    let got: Vec<Value> = everything.iter().map(|_| wide.next_json()).collect();
    assert_events(&got, &everything, "wide token");

    // The narrow token, resuming on the other reactor: only its scope.
    let target = other_reactor(&relay, narrow_reactor);
    let mut narrow = connect_to_reactor(&relay, target, Some(&bearer(NARROW)), &mut spare);
    // A resume on a pattern beyond the scope is refused, and replays nothing.
    let refused = narrow.request(&resume_command(&["job.*"], &epoch, seen.seq, false));
    error_message(&refused, "forbidden");
    let refused = narrow.request(&resume_command(&[">"], &epoch, seen.seq, true));
    error_message(&refused, "forbidden");
    narrow.assert_alive();
    let reply = narrow.request(&resume_command(&NARROW_SCOPE, &epoch, seen.seq, false));
    assert_recovered(&reply, &NARROW_SCOPE, &epoch);
    let mut want = in_scope.clone();
    publish(&relay, "job.secret.b", json!({"live": "out of scope"}));
    want.push(emit(&relay, "job.public.end", json!({"sentinel": true})));
    let got = read_through_sentinel(&mut narrow, "job.public.end");
    assert_events(&got, &want, "narrow token, replay then live");

    // A snapshot with the narrow token: the last values in scope only.
    let reply = narrow.request(&json!({
        "type": "subscribe", "channels": NARROW_SCOPE, "snapshot": true
    }));
    let s = assert_subscribed(&reply, &NARROW_SCOPE);
    let mut latest: Vec<Expected> = vec![seen.clone()];
    latest.extend(in_scope.iter().cloned());
    latest.push(want.last().unwrap().clone());
    latest.retain(|e| e.seq <= s);
    let got: Vec<Value> = latest.iter().map(|_| narrow.next_json()).collect();
    assert_events(&got, &latest, "narrow snapshot");
    narrow.assert_alive();

    // The `auth` message path: not authenticated yet, no replay at all;
    // then authenticated with the narrow token, its scope only.
    let mut late = connect(relay.addr);
    let refused = late.request(&resume_command(&NARROW_SCOPE, &epoch, seen.seq, true));
    error_message(&refused, "not_authenticated");
    let reply = late.request(&json!({"type": "auth", "token": NARROW}));
    assert_eq!(reply, json!({"type": "authenticated"}));
    let reply = late.request(&resume_command(&NARROW_SCOPE, &epoch, seen.seq, false));
    assert_recovered(&reply, &NARROW_SCOPE, &epoch);
    // The replay, then (if this reactor had not got that far) the rest live.
    let got: Vec<Value> = want.iter().map(|_| late.next_json()).collect();
    assert_events(&got, &want, "auth message, then resume");
    late.assert_alive();
}

// ---------------------------------------------------------------------------
// 5. Snapshots with patterns

fn metrics_relay() -> TestRelay {
    TestRelay::with(|c| c.history.last_value = vec!["metrics.>".into()])
}

#[test]
fn snapshot_sends_the_latest_event_of_each_matching_channel_in_seq_order() {
    let relay = metrics_relay();
    publish(&relay, "metrics.cpu", json!({"v": 1}));
    publish(&relay, "metrics.mem", json!({"v": 1}));
    let cpu = emit(&relay, "metrics.cpu", json!({"v": 2}));
    let disk = emit(&relay, "metrics.disk.sda", json!({"v": 1}));
    publish(&relay, "other.x", json!({"v": 1}));
    publish(&relay, "metrics", json!({"v": 1})); // not matched by metrics.>
    let mem = emit(&relay, "metrics.mem", json!({"v": 2}));

    let cases: [(&[&str], Vec<&Expected>); 5] = [
        (&["metrics.>"], vec![&cpu, &disk, &mem]),
        (&["metrics.*"], vec![&cpu, &mem]),
        (&["metrics.cpu", "metrics.disk.>"], vec![&cpu, &disk]),
        (&["metrics.cpu", "metrics.cpu"], vec![&cpu]),
        (&["other.>", "metrics"], vec![]),
    ];
    for (channels, want) in cases {
        let mut client = connect(relay.addr);
        barrier(&relay, &mut client);
        let reply = client.request(&json!({
            "type": "subscribe", "channels": channels, "snapshot": true
        }));
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let s = reply["seq"].as_u64().expect("seq");
        assert!(s > mem.seq, "{reply}");
        let want: Vec<Expected> = want.into_iter().cloned().collect();
        let got: Vec<Value> = want.iter().map(|_| client.next_json()).collect();
        assert_events(&got, &want, &format!("snapshot of {channels:?}"));
        // Nothing else before the pong: no duplicates, no other channels.
        client.assert_alive();
    }
    // Live after the snapshot, nothing twice.
    let mut client = connect(relay.addr);
    let reply = client.request(&json!({
        "type": "subscribe", "channels": ["metrics.*"], "snapshot": true
    }));
    let s = assert_subscribed(&reply, &["metrics.*"]);
    let mut want: Vec<Expected> = [&cpu, &mem]
        .into_iter()
        .filter(|e| e.seq <= s)
        .cloned()
        .collect();
    let live = emit(&relay, "metrics.cpu", json!({"v": 3}));
    want.extend([&cpu, &mem].into_iter().filter(|e| e.seq > s).cloned());
    want.push(live);
    want.push(emit(&relay, "metrics.end", json!({"sentinel": true})));
    let got = read_through_sentinel(&mut client, "metrics.end");
    assert_events(&got, &want, "snapshot, then live");
}

#[test]
fn snapshot_alongside_a_resume_does_not_repeat_what_the_replay_sent() {
    let relay = metrics_relay();
    let (mut client, first_reactor) = connect_located(&relay, None);
    let (epoch, _) = subscribe_at(&mut client, &["metrics.>"]);
    let disk = emit(&relay, "metrics.disk.sda", json!({"v": 1}));
    publish(&relay, "metrics.cpu", json!({"v": 1}));
    let mem = emit(&relay, "metrics.mem", json!({"v": 1}));
    let last = emit(&relay, "metrics.cpu", json!({"v": 2, "sentinel": true}));
    let got = read_through_sentinel(&mut client, "metrics.cpu");
    assert_eq!(got.len(), 4);
    drop(client);

    // The gap changes cpu again and adds a channel.
    let cpu3 = emit(&relay, "metrics.cpu", json!({"v": 3}));
    publish(&relay, "other.y", json!({"v": 1}));
    let net = emit(&relay, "metrics.net", json!({"v": 1}));
    let cpu4 = emit(&relay, "metrics.cpu", json!({"v": 4}));

    let mut spare = Vec::new();
    let target = other_reactor(&relay, first_reactor);
    let mut resumed = connect_to_reactor(&relay, target, None, &mut spare);
    let reply = resumed.request(&resume_command(&["metrics.>"], &epoch, last.seq, true));
    let s = assert_recovered(&reply, &["metrics.>"], &epoch);
    assert!(s >= last.seq, "{reply}");
    // The replay (cpu3, net, cpu4) and the last values it did not cover
    // (disk and mem, older than since), merged in seq order, each once
    // (whatever the reply's position did not reach comes live, in order).
    let cpu4_seq = cpu4.seq;
    let want = vec![disk, mem, cpu3, net, cpu4];
    let got: Vec<Value> = want.iter().map(|_| resumed.next_json()).collect();
    assert_events(&got, &want, "resume with snapshot");
    resumed.assert_alive();

    // A resume that cannot recover still gets the full snapshot.
    let mut other = connect(relay.addr);
    let reply = other.request(&resume_command(&["metrics.>"], "0000000000zz", 1, true));
    assert_not_recovered(&reply, &["metrics.>"], &epoch, "epoch");
    let want: Vec<Expected> = want
        .into_iter()
        .filter(|e| e.channel != "metrics.cpu" || e.seq == cpu4_seq)
        .collect();
    let got: Vec<Value> = want.iter().map(|_| other.next_json()).collect();
    assert_events(&got, &want, "snapshot after recovered:false");
    other.assert_alive();
}

// ---------------------------------------------------------------------------
// 6. REST reads

#[test]
fn rest_reads_of_last_values_without_auth() {
    let relay = metrics_relay();
    let mut witness = connect(relay.addr);
    let (epoch, _) = subscribe_at(&mut witness, &[">"]);
    publish(&relay, "metrics.cpu", json!({"v": 1}));
    publish(&relay, "metrics.disk.sda", json!({"v": 1}));
    publish(&relay, "other.x", json!({"v": 1}));
    publish(&relay, "metrics.cpu", json!({"v": 2}));
    publish(&relay, "metrics.mem", json!({"v": "a b"}));
    // The REST reads must give the very JSON the WebSocket carried.
    let texts: Vec<String> = (0..5).map(|_| witness.next_text()).collect();
    let (disk, cpu, mem) = (&texts[1], &texts[3], &texts[4]);

    let response = http_get(relay.addr, "/api/channels/metrics.cpu");
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert_eq!(&response.body_text(), cpu, "as on the WebSocket");
    // Percent-encoded channel name.
    let response = http_get(relay.addr, "/api/channels/metrics%2Edisk.sda");
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(&response.body_text(), disk);
    for missing in ["metrics.never", "other.x", "metrics"] {
        let response = http_get(relay.addr, &format!("/api/channels/{missing}"));
        assert_eq!(response.status, 404, "{missing}: {}", response.body_text());
        assert_eq!(response.json()["error"]["code"], "not_found");
    }

    // Pattern reads, compared as sets of events (re-serialised JSON).
    let array = |path: &str| -> Vec<String> {
        let response = http_get(relay.addr, path);
        assert_eq!(response.status, 200, "{path}: {}", response.body_text());
        let v = response.json();
        let mut items: Vec<String> = v
            .as_array()
            .unwrap_or_else(|| panic!("{path}: not an array: {v}"))
            .iter()
            .map(|e| e.to_string())
            .collect();
        items.sort();
        items
    };
    let parsed = |texts: &[&String]| -> Vec<String> {
        let mut items: Vec<String> = texts
            .iter()
            .map(|t| serde_json::from_str::<Value>(t).unwrap().to_string())
            .collect();
        items.sort();
        items
    };
    let all = array("/api/channels?pattern=metrics.%3E");
    assert_eq!(
        all,
        parsed(&[disk, cpu, mem]),
        "metrics.> (percent-encoded)"
    );
    let one_level = parsed(&[cpu, mem]);
    let got = array("/api/channels?pattern=metrics.%2A");
    assert_eq!(got, one_level, "metrics.* (percent-encoded)");
    let got = array("/api/channels?pattern=metrics.*");
    assert_eq!(got, one_level, "metrics.*");
    let got = array("/api/channels?pattern=other.%3E");
    assert_eq!(got, Vec::<String>::new(), "not kept");
    let got = array("/api/channels?pattern=metrics.disk.%3E");
    assert_eq!(got, parsed(&[disk]), "metrics.disk.>");

    let response = http_get(relay.addr, "/api/channels");
    assert_eq!(response.status, 400, "{}", response.body_text());
    let response = http_get(relay.addr, "/api/channels?pattern=a..b");
    assert_eq!(response.status, 400, "{}", response.body_text());
    assert_eq!(response.json()["error"]["code"], "invalid_channel");

    let response = http_get(relay.addr, "/api/stats");
    assert_eq!(response.status, 200, "{}", response.body_text());
    let stats = response.json();
    assert_eq!(stats["epoch"], epoch, "{stats}");
    assert_eq!(stats["events_published"], 5, "{stats}");
    let top = stats["top_channels"].as_array().expect("top_channels");
    assert!(
        top.iter()
            .any(|t| t["pattern"] == ">" && t["subscribers"] == 1),
        "{stats}"
    );
}

#[test]
fn rest_reads_need_a_client_token_and_honour_its_scope() {
    const SCOPE: [&str; 2] = ["metrics.cpu", "metrics.disk.>"];
    let relay = TestRelay::with(|c| {
        with_auth(c, &[(ALL, None), (NARROW, Some(&SCOPE))]);
        c.history.last_value = vec!["metrics.>".into()];
    });
    let cpu = publish(&relay, "metrics.cpu", json!({"v": 1}));
    let mem = publish(&relay, "metrics.mem", json!({"v": 1}));
    let sda = publish(&relay, "metrics.disk.sda", json!({"v": 1}));
    let get = |path: &str, token: Option<&str>| {
        let extra = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        http_get_with(relay.addr, path, &extra)
    };
    let seqs = |response: &HttpResponse| -> Vec<u64> {
        let mut seqs: Vec<u64> = response
            .json()
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect();
        seqs.sort_unstable();
        seqs
    };

    let paths = [
        "/api/channels/metrics.cpu",
        "/api/channels?pattern=metrics.%3E",
        "/api/stats",
    ];
    for path in paths {
        for token in [None, Some("wrong-token"), Some("")] {
            let response = get(path, token);
            assert_eq!(response.status, 401, "{path} {token:?}: {}", response.head);
            assert_eq!(response.json()["error"]["code"], "unauthorized");
        }
        let response = get(path, Some(ALL));
        assert_eq!(response.status, 200, "{path}: {}", response.body_text());
    }

    let all = get("/api/channels?pattern=metrics.%3E", Some(ALL));
    assert_eq!(seqs(&all), [cpu, mem, sda]);

    // The narrow token: its channels, 403 outside, patterns filtered.
    let response = get("/api/channels/metrics.cpu", Some(NARROW));
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.json()["seq"], cpu);
    let response = get("/api/channels/metrics.disk.sda", Some(NARROW));
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.json()["seq"], sda);
    // 404 inside the scope, 403 outside it (whether kept or not).
    let response = get("/api/channels/metrics.disk.none", Some(NARROW));
    assert_eq!(response.status, 404, "{}", response.body_text());
    for outside in ["metrics.mem", "metrics.none", "other.x"] {
        let response = get(&format!("/api/channels/{outside}"), Some(NARROW));
        assert_eq!(response.status, 403, "{outside}: {}", response.body_text());
        assert_eq!(response.json()["error"]["code"], "forbidden");
        assert!(
            !response.body_text().contains("\"v\""),
            "no event in a refusal"
        );
    }
    for outside in ["metrics.%3E", "metrics.%2A", "%3E"] {
        let path = format!("/api/channels?pattern={outside}");
        let response = get(&path, Some(NARROW));
        assert_eq!(response.status, 403, "{path}: {}", response.body_text());
    }
    let response = get("/api/channels?pattern=metrics.disk.%3E", Some(NARROW));
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(seqs(&response), [sda]);
    let response = get("/api/stats", Some(NARROW));
    assert_eq!(response.status, 200, "{}", response.body_text());
}

// ---------------------------------------------------------------------------
// 7. Overflow under `slow_consumer = "resync"`

#[test]
fn overflow_sends_resync_keeps_the_socket_and_the_gap_can_be_resumed() {
    let relay = TestRelay::with(|c| {
        c.limits.slow_consumer = SlowConsumerPolicy::Resync;
        c.limits.max_queue_bytes = 64 * 1024;
        c.limits.socket_send_buffer = 16 * 1024;
        // Only the queue policy is in play.
        c.timeouts.write_deadline = Duration::from_secs(600);
        // The history holds the whole flood.
        c.history.max_events = 100_000;
        c.history.max_bytes = 256 * 1024 * 1024;
        c.history.max_replay = 100_000;
    });
    // A reader that subscribes and then reads nothing until the flood is over.
    let mut stuck = Raw::upgrade(relay.addr);
    stuck.send_text(r#"{"type":"subscribe","channels":["flood.x"]}"#);
    let reply = stuck.next_json();
    let s0 = assert_subscribed(&reply, &["flood.x"]);
    let epoch = reply["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(s0, 0);

    // Flood (~1 KB events, seq = i + 1: nothing else is published) until
    // the relay has dropped a backlog, then a little more.
    let pad = "r".repeat(1000);
    let mut last = 0;
    let mut extra = None;
    while extra != Some(0) {
        for _ in 0..200 {
            last = publish(&relay, "flood.x", json!({"i": last, "pad": pad}));
        }
        assert!(last < 200_000, "no resync after {last} events");
        if extra.is_none() && relay.stats().resyncs > 0 {
            extra = Some(2);
        }
        extra = extra.map(|n: u32| n - 1);
    }

    // Drain: events with rising seqs, at least one `overflow` notice naming
    // the last dropped seq, then the events after it, up to the last one
    // (or a notice for it).
    let (mut last_seq, mut before_notice, mut notices) = (0, None, 0);
    loop {
        let v = stuck.next_json();
        if v["type"] == "resync" {
            assert_eq!(v["data"]["reason"], "overflow", "{v}");
            assert_eq!(v["data"]["epoch"], epoch, "{v}");
            let dropped = v["data"]["seq"].as_u64().expect("seq");
            assert!(dropped > last_seq, "{v} after seq {last_seq}");
            before_notice.get_or_insert(last_seq);
            last_seq = dropped;
            notices += 1;
        } else {
            let seq = event_seq(&v, "flood.x");
            assert!(seq > last_seq, "seq {seq} after {last_seq}");
            assert_eq!(v["data"]["i"], seq - 1, "{}", v["seq"]);
            last_seq = seq;
        }
        if last_seq == last {
            break;
        }
    }
    let since = before_notice.expect("no resync notice although the stats count one");
    assert_eq!(
        relay.stats().slow_consumer_closes,
        0,
        "policy resync closes nothing"
    );
    eprintln!("{notices} resync notices; last event before the first: {since}; flood: {last}");

    // The socket is still open and usable.
    stuck.send_text(r#"{"type":"ping"}"#);
    assert_eq!(stuck.next_json()["type"], "pong");

    // Resume from the last event seen before the notice: the history still
    // holds the gap, so the relay must fill it.
    let command = resume_command(&["flood.x"], &epoch, since, false);
    stuck.send_text(&command.to_string());
    let reply = stuck.next_json();
    assert_eq!(
        reply["recovered"],
        true,
        "resume after a resync notice did not recover (gap {} events of ~1 KB, \
         max_queue_bytes 64 KiB, history holds {} events; a resync drops at least a \
         full queue, so a replay of the gap can never pass the queue-room check): {reply}",
        last - since,
        relay.stats().events_published,
    );
    let s = assert_recovered(&reply, &["flood.x"], &epoch);
    assert_eq!(s, last);
    for seq in since + 1..=s {
        let v = stuck.next_json();
        assert_eq!(event_seq(&v, "flood.x"), seq, "replay of the gap");
    }
    let live = publish(&relay, "flood.x", json!({"i": last}));
    assert_eq!(event_seq(&stuck.next_json(), "flood.x"), live);
}

// ---------------------------------------------------------------------------
// 8. Position semantics

#[test]
fn before_any_event_the_position_is_zero_and_the_epoch_is_one_per_run() {
    let relay = TestRelay::start();
    let reactors = relay.reactor_stats().len();
    let mut spare = Vec::new();
    let mut epochs = Vec::new();
    for reactor in 0..reactors {
        let mut client = connect_to_reactor(&relay, reactor, None, &mut spare);
        let (epoch, seq) = subscribe_at(&mut client, &["p.x"]);
        assert_eq!(seq, 0, "no event was ever published");
        assert_eq!(epoch.len(), 12, "{epoch}");
        epochs.push(epoch);
        spare.push(client);
    }
    assert!(
        epochs.windows(2).all(|w| w[0] == w[1]),
        "reactors disagree on the epoch: {epochs:?}"
    );
    let stats = http_get(relay.addr, "/api/stats");
    assert_eq!(stats.status, 200, "{}", stats.body_text());
    let stats = stats.json();
    assert_eq!(stats["epoch"], epochs[0], "{stats}");
    assert_eq!(stats["reactors"], reactors, "{stats}");

    // Another run of the relay has another epoch.
    let other = TestRelay::start();
    let mut client = connect(other.addr);
    let (other_epoch, _) = subscribe_at(&mut client, &["p.x"]);
    assert_ne!(other_epoch, epochs[0], "two runs share an epoch");
}

#[test]
fn events_after_the_reply_arrive_with_later_seqs_and_none_is_missed() {
    const EVENTS: u64 = 2000;
    // Clients read only at the end: room for the whole burst in each queue.
    let relay = TestRelay::with(|c| {
        c.limits.max_queue_messages = 100_000;
        c.limits.max_queue_bytes = 64 * 1024 * 1024;
    });
    let (started_tx, started_rx) = mpsc::channel();
    let publisher = relay.publisher.clone();
    let producer = thread::spawn(move || {
        let mut seqs = Vec::new();
        for i in 0..EVENTS {
            let event = Event::new("pos.x", &json!({"i": i})).expect("event");
            seqs.push(publisher.publish(event).expect("publish"));
            if i == 0 {
                started_tx.send(()).expect("started");
            }
            if i % 16 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        seqs
    });
    started_rx.recv_timeout(WAIT).expect("producer started");
    // Clients subscribe one after another while the burst runs, on
    // whichever reactor the kernel picks.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (mut client, reactor) = connect_located(&relay, None);
        let (_, s) = subscribe_at(&mut client, &["pos.x"]);
        clients.push((client, s, reactor));
        thread::sleep(Duration::from_millis(20));
    }
    let seqs = producer.join().expect("producer");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one producer, one channel"
    );
    let sentinel = emit(&relay, "pos.x", json!({"sentinel": true}));
    let mut mid_burst = 0;
    for (client, s, reactor) in &mut clients {
        let got = read_through_sentinel(client, "pos.x");
        // Exactly the events after the reply's position, each once.
        let want: Vec<u64> = (*s + 1..=sentinel.seq).collect();
        let seen: Vec<u64> = got
            .iter()
            .map(|v| v["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(
            seen.first(),
            want.first(),
            "reactor {reactor}: reply at {s}, first live event"
        );
        assert_eq!(seen, want, "reactor {reactor}: reply at {s}");
        if *s > seqs[0] && *s < *seqs.last().unwrap() {
            mid_burst += 1;
        }
    }
    eprintln!("{mid_burst} of {} subscribed mid-burst", clients.len());
}
