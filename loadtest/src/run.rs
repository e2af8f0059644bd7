//! The modes: plan the members, connect, run phases, report.

use crate::cli::{
    check_name, parse_url, parse_ws_urls, Common, FanoutArgs, IdleArgs, Publish, StormArgs,
    SweepArgs, Target,
};
use crate::control::Cmd;
use crate::fleet::Fleet;
use crate::publisher::{self, PubCfg, PubStats, PublishMode};
use crate::report::{self, PhaseInput, PhaseSummary, Table};
use crate::resume;
use crate::stats::{ConnectReport, Window};
use crate::storm::{Backoff, DropHow, StormSummary};
use crate::successor::{self, Successor};
use crate::swarm::{self, StormCfg, StormHooks, SwarmCfg};
use crate::sys::{self, Who};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// File descriptors a process keeps for itself besides its connections.
const FD_RESERVE: usize = 100;

/// The `--server-pid` processes' CPU seconds at a starting point.
struct ServerCpu(Vec<(u32, Option<f64>)>);

impl ServerCpu {
    fn start(pids: &[u32]) -> ServerCpu {
        ServerCpu(
            pids.iter()
                .map(|&p| (p, sys::proc_cpu_seconds(p)))
                .collect(),
        )
    }

    /// Each pid's CPU seconds since the start (those read both times).
    fn by_pid(&self) -> BTreeMap<u32, f64> {
        self.0
            .iter()
            .filter_map(|&(pid, start)| Some((pid, sys::proc_cpu_seconds(pid)? - start?)))
            .collect()
    }

    /// Their sum; None without pids, or if one could not be read.
    fn total(by_pid: &BTreeMap<u32, f64>, pids: usize) -> Option<f64> {
        (pids > 0 && by_pid.len() == pids).then(|| by_pid.values().sum())
    }
}

/// Splits the connections over members: one thread if this process can
/// hold them all, worker processes otherwise (or as `--processes` says).
/// Each member spreads its share over the targets round-robin, by the
/// connection's index in the whole swarm.
pub fn plan(c: &Common, targets: &[Target]) -> Result<(Vec<SwarmCfg>, bool), String> {
    check_name(&c.channel)?;
    let pattern = c.pattern.clone().unwrap_or_else(|| c.channel.clone());
    check_name(&pattern)?;
    let token = c.token()?;
    if c.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let sources = (c.connections - 1) / c.per_source.max(1) + 1;
    if sources > 253 {
        return Err(format!(
            "{sources} source addresses needed; raise --per-source"
        ));
    }
    let (soft, _hard) = sys::raise_nofile();
    let per_process = (soft as usize).saturating_sub(FD_RESERVE).max(1);
    let (members, processes) = match c.processes {
        Some(0) => (1, false),
        Some(k) => (k, true),
        None if c.connections <= per_process => (1, false),
        None => (c.connections.div_ceil(per_process), true),
    };
    if c.connections.div_ceil(members) > per_process {
        return Err(format!(
            "{} connections per process exceed the file limit ({soft})",
            c.connections.div_ceil(members)
        ));
    }
    let base = c.connections / members;
    let extra = c.connections % members;
    let mut offset = 0;
    let cfgs = (0..members)
        .map(|m| {
            let n = base + usize::from(m < extra);
            let cfg = SwarmCfg {
                targets: targets.to_vec(),
                pattern: pattern.clone(),
                token: token.clone(),
                connections: n,
                offset,
                connect_rate: c.connect_rate / members as f64,
                per_source: c.per_source,
                connect_timeout_ms: (c.connect_timeout * 1000.0) as u64,
                max_inflight: c.max_inflight.div_ceil(members).max(1),
                drain_ms: (c.drain * 1000.0) as u64,
                idle_limit_s: 3600,
                deflate: c.deflate,
            };
            offset += n;
            cfg
        })
        .filter(|cfg| cfg.connections > 0)
        .collect();
    Ok((cfgs, processes))
}

/// Starts the members and waits until they are connected.
fn connect(c: &Common, targets: &[Target]) -> Result<(Fleet, ConnectReport), String> {
    let (cfgs, processes) = plan(c, targets)?;
    let server0 = ServerCpu::start(&c.server_pids);
    let mut fleet = Fleet::start(cfgs, processes)?;
    let tty = std::io::stderr().is_terminal();
    let n = c.connections as u64;
    let t0 = Instant::now();
    let timeout = Duration::from_secs_f64(
        n as f64 / c.connect_rate.max(1.0) + c.connect_timeout * 2.0 + 30.0,
    );
    let report = fleet.connected(timeout, &mut |started, ready, failed| {
        if tty {
            let done = (ready + failed) * 30 / n.max(1);
            let bar: String = (0..30).map(|i| if i < done { '#' } else { '-' }).collect();
            let rate = ready as f64 / t0.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\r[{bar}] {ready}/{n} ready, {failed} failed, {started} started, {rate:.0}/s "
            );
            let _ = std::io::stderr().flush();
        }
    });
    if tty {
        eprintln!();
    }
    match report {
        Ok(r) if r.ready == 0 => {
            fleet.stop();
            let mut t = Table::new();
            report::connect_rows(&mut t, &report::connect_summary(&r));
            t.print();
            Err("no connection subscribed".into())
        }
        Ok(mut r) => {
            r.server_cpu_s = ServerCpu::total(&server0.by_pid(), c.server_pids.len());
            Ok((fleet, r))
        }
        Err(e) => {
            fleet.stop();
            Err(e)
        }
    }
}

fn publish_cfg(
    c: &Common,
    p: &Publish,
    target: &Target,
    rate: Option<f64>,
) -> Result<PubCfg, String> {
    let url = p
        .publish_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/api/publish", target.host));
    let t = parse_url(&url, "http")?;
    match (p.publish_mode, p.publish_conns) {
        (_, 0) => return Err("--publish-conns must be at least 1".into()),
        (PublishMode::Batch, 2..) => {
            return Err(
                "--publish-conns above 1 needs --publish-mode single (batch uses one connection)"
                    .into(),
            )
        }
        (PublishMode::Single, k) if k > publisher::MAX_CONNS => {
            return Err(format!(
                "--publish-conns {k}: at most {}",
                publisher::MAX_CONNS
            ))
        }
        _ => {}
    }
    Ok(PubCfg {
        target: t.addr,
        host: t.host,
        path: t.path,
        channel: c.channel.clone(),
        rate,
        payload: p.payload,
        batch_max: p.batch_max,
        mode: p.publish_mode,
        conns: p.publish_conns,
        record_seqs: false,
    })
}

/// One measured phase: publish for warmup + duration, then collect.
fn phase(fleet: &mut Fleet, c: &Common, p: &Publish, pc: PubCfg) -> Result<PhaseSummary, String> {
    let rate = pc.rate;
    let start = sys::unix_us() + 300_000;
    let steady_start = start + (p.warmup * 1e6) as u64;
    let steady_end = steady_start + (p.duration * 1e6) as u64;
    let drain = (c.drain * 1e6) as u64;
    let window = Window {
        start_us: start,
        steady_start_us: steady_start,
        steady_end_us: steady_end,
        deadline_us: steady_end + drain + 30_000_000,
    };
    let server0 = ServerCpu::start(&c.server_pids);
    let wall0 = Instant::now();
    fleet.send(&Cmd::Go(window));
    let published = publisher::run(pc, start, steady_end);
    // The publisher's own threads (K of them in single mode).
    let publisher_cpu_s = published.cpu_s;
    fleet.send(&Cmd::End {
        published: published.accepted,
    });
    let stats = fleet.phase(Duration::from_secs_f64(c.drain + 40.0))?;
    let wall_seconds = wall0.elapsed().as_secs_f64();
    let server_cpu_by_pid = server0.by_pid();
    let server_cpu_s = ServerCpu::total(&server_cpu_by_pid, c.server_pids.len());
    Ok(report::phase_summary(&PhaseInput {
        rate,
        publish: &published,
        stats: &stats,
        steady_seconds: p.duration,
        wall_seconds,
        publisher_cpu_s,
        server_cpu_s,
        server_cpu_by_pid,
    }))
}

/// `batch` or `single:K`, as compare.sh's `--publisher` spells it.
fn publisher_label(p: &Publish) -> String {
    p.publish_mode.label(p.publish_conns)
}

fn header(mode: &str, c: &Common, fleet: &Fleet) -> serde_json::Value {
    json!({
        "mode": mode,
        "url": c.urls.first(),
        "urls": c.urls,
        "channel": c.channel,
        "pattern": c.pattern.clone().unwrap_or_else(|| c.channel.clone()),
        "connections_requested": c.connections,
        "members": fleet.len(),
        "server_pid": c.server_pids.first(),
        "server_pids": c.server_pids,
        "unix_time_s": sys::unix_us() / 1_000_000,
    })
}

/// `--plot`: the phase's latency CDF as SVG; a failure is reported, not fatal.
fn plot_to(path: &std::path::Path, s: &PhaseSummary, what: &str) {
    let rate = s
        .rate_target
        .map_or("max".to_string(), |r| format!("{r} events/s"));
    let title = format!(
        "tidings {what}: latency CDF ({} sockets, {rate}, n={})",
        s.connections_at_start, s.latency.count
    );
    match crate::plot::write_cdf(path, &s.hist, &title) {
        Ok(n) => eprintln!("  plot: {} ({n} points)", path.display()),
        Err(e) => eprintln!("  plot: not written: {e}"),
    }
}

fn total_cpu() -> f64 {
    sys::cpu_seconds(Who::Process) + sys::cpu_seconds(Who::Children)
}

pub fn fanout(a: FanoutArgs) -> Result<(), String> {
    let c = &a.common;
    let targets = parse_ws_urls(&c.urls)?;
    let target = &targets[0];
    let pc = publish_cfg(c, &a.publish, target, a.rate.per_second())?;
    let (mut fleet, connected) = connect(c, &targets)?;
    let result = phase(&mut fleet, c, &a.publish, pc);
    let mut head = header("fanout", c, &fleet);
    head["publisher"] = json!(publisher_label(&a.publish));
    fleet.stop();
    let summary = result?;
    let cs = report::connect_summary(&connected);
    let mut t = Table::new();
    report::connect_rows(&mut t, &cs);
    report::phase_rows(&mut t, &summary);
    t.print();
    if let Some(path) = &a.plot {
        plot_to(path, &summary, "fanout");
    }
    head["connect"] = json!(cs);
    head["phase"] = json!(summary);
    head["swarm_cpu_total_s"] = json!(total_cpu());
    report::emit(&head);
    Ok(())
}

pub fn sweep(a: SweepArgs) -> Result<(), String> {
    let c = &a.common;
    let targets = parse_ws_urls(&c.urls)?;
    let target = &targets[0];
    if a.step.is_nan() || a.step <= 1.0 {
        return Err("--step must be above 1".into());
    }
    publish_cfg(c, &a.publish, target, Some(a.start_rate))?; // flag errors before connecting
    let (mut fleet, connected) = connect(c, &targets)?;
    let mut steps: Vec<PhaseSummary> = Vec::new();
    let mut stopped = "max_steps".to_string();
    let mut rate = a.start_rate;
    for _ in 0..a.max_steps {
        let pc = match publish_cfg(c, &a.publish, target, Some(rate)) {
            Ok(pc) => pc,
            Err(e) => {
                stopped = e;
                break;
            }
        };
        let s = match phase(&mut fleet, c, &a.publish, pc) {
            Ok(s) => s,
            Err(e) => {
                stopped = e;
                break;
            }
        };
        let p99_ms = s.latency.p99_us as f64 / 1000.0;
        eprintln!(
            "step {rate:.1} events/s: {:.0} deliveries/s, completeness {:.5}, p99 {p99_ms:.2} ms",
            s.deliveries_per_s, s.completeness
        );
        let failed = if s.completeness < a.min_completeness {
            Some(format!(
                "completeness {:.5} < {}",
                s.completeness, a.min_completeness
            ))
        } else if p99_ms > a.max_p99_ms {
            Some(format!("p99 {p99_ms:.1} ms > {} ms", a.max_p99_ms))
        } else if s.events_per_s < 0.9 * rate {
            Some(format!(
                "publisher reached only {:.1} of {rate:.1} events/s",
                s.events_per_s
            ))
        } else if s.connections_at_end == 0 {
            Some("no connections left".into())
        } else {
            None
        };
        steps.push(s);
        if let Some(f) = failed {
            stopped = f;
            break;
        }
        rate *= a.step;
    }
    let mut head = header("sweep", c, &fleet);
    head["publisher"] = json!(publisher_label(&a.publish));
    fleet.stop();
    let passing = |s: &&PhaseSummary| {
        s.completeness >= a.min_completeness
            && s.latency.p99_us as f64 / 1000.0 <= a.max_p99_ms
            && s.events_per_s >= 0.9 * s.rate_target.unwrap_or(0.0)
    };
    let best = steps
        .iter()
        .filter(passing)
        .max_by(|x, y| x.deliveries_per_s.total_cmp(&y.deliveries_per_s));
    let cs = report::connect_summary(&connected);
    let mut t = Table::new();
    report::connect_rows(&mut t, &cs);
    for s in &steps {
        t.row(
            "--- step",
            s.rate_target
                .map_or("max".into(), |r| format!("{r:.1} events/s")),
        );
        report::phase_rows(&mut t, s);
    }
    t.row("stopped because", &stopped);
    t.row(
        "best sustained",
        best.map_or("none".into(), |b| {
            format!("{:.0} deliveries/s", b.deliveries_per_s)
        }),
    );
    t.print();
    if let (Some(path), Some(last)) = (&a.plot, steps.last()) {
        plot_to(path, last, "sweep, last step");
    }
    head["connect"] = json!(cs);
    head["steps"] = json!(steps);
    head["stopped_because"] = json!(stopped);
    head["best_deliveries_per_s"] = json!(best.map(|b| b.deliveries_per_s));
    head["best_rate"] = json!(best.and_then(|b| b.rate_target));
    head["swarm_cpu_total_s"] = json!(total_cpu());
    report::emit(&head);
    Ok(())
}

pub fn idle(a: IdleArgs) -> Result<(), String> {
    let c = &a.common;
    let targets = parse_ws_urls(&c.urls)?;
    let rss = || sys::procs_rss_kib(&c.server_pids);
    let rss_before = rss();
    let (mut fleet, connected) = connect(c, &targets)?;
    let rss_connected = rss();
    let now = sys::unix_us();
    let hold = (a.duration * 1e6) as u64;
    fleet.send(&Cmd::Go(Window {
        start_us: now,
        steady_start_us: now,
        steady_end_us: now + hold,
        deadline_us: now + hold + 30_000_000,
    }));
    // The members keep answering pings while this thread waits.
    std::thread::sleep(Duration::from_micros(hold));
    fleet.send(&Cmd::End { published: 0 });
    let result = fleet.phase(Duration::from_secs(40));
    let rss_after = rss();
    let mut head = header("idle", c, &fleet);
    fleet.stop();
    let stats = result?;
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected.ready > 0 => {
            Some((a.saturating_sub(b) as f64 * 1024.0) / connected.ready as f64)
        }
        _ => None,
    };
    let cs = report::connect_summary(&connected);
    let mut t = Table::new();
    report::connect_rows(&mut t, &cs);
    t.row(
        "held",
        format!("{:.1} s, {} open at the end", a.duration, stats.open_at_end),
    );
    t.row("closes", format!("{:?}", stats.closes));
    t.row("server pings", stats.pings);
    if let (Some(b), Some(x)) = (rss_before, rss_after) {
        t.row("server RSS", format!("{b} KiB before, {x} KiB after"));
    }
    if let Some(p) = per_conn {
        t.row("RSS per connection", format!("{p:.0} bytes"));
    }
    t.row("swarm CPU", format!("{:.2} s during the hold", stats.cpu_s));
    t.print();
    head["connect"] = json!(cs);
    head["hold_seconds"] = json!(a.duration);
    head["open_at_end"] = json!(stats.open_at_end);
    head["closes"] = json!(stats.closes);
    head["server_pings"] = json!(stats.pings);
    head["server_rss_kib_before"] = json!(rss_before);
    head["server_rss_kib_connected"] = json!(rss_connected);
    head["server_rss_kib_after"] = json!(rss_after);
    head["server_rss_bytes_per_connection"] = json!(per_conn);
    head["swarm_cpu_hold_s"] = json!(stats.cpu_s);
    head["swarm_cpu_total_s"] = json!(total_cpu());
    report::emit(&head);
    Ok(())
}

/// How long a successor may take to listen, and to exit on SIGTERM.
const SUCCESSOR_WAIT: Duration = Duration::from_secs(30);

/// What dropped the clients, and the retry hints they got, for the
/// plot's title.
fn summary_label(a: &StormArgs, s: &StormSummary) -> String {
    let how = match a.drop_how {
        DropHow::Server => "relay restart".to_string(),
        other => format!("clients drop: {}", format!("{other:?}").to_lowercase()),
    };
    let hints = match (s.retry_after_max_s, a.ignore_retry_after) {
        (None, _) => String::new(),
        (Some(max), false) => format!(", retry_after_ms 0-{max:.1} s honoured"),
        (Some(max), true) => format!(", retry_after_ms 0-{max:.1} s ignored"),
    };
    how + &hints
}

pub fn storm(a: StormArgs) -> Result<(), String> {
    let c = &a.common;
    let targets = parse_ws_urls(&c.urls)?;
    let target = &targets[0];
    if matches!(c.processes, Some(k) if k > 0) {
        return Err("storm runs in one process; --processes is not supported".into());
    }
    if !(a.base > 0.0 && a.cap >= a.base) {
        return Err("--base must be above 0 and --cap at least --base".into());
    }
    if a.deadline <= 0.0 {
        return Err("--deadline must be above 0".into());
    }
    let (soft, _) = sys::raise_nofile();
    let one_process = (soft as usize).saturating_sub(FD_RESERVE);
    if c.connections > one_process {
        return Err(format!(
            "storm runs in one process, which can hold {one_process} connections \
             (file limit {soft} less {FD_RESERVE}); lower --connections or raise `ulimit -n`"
        ));
    }
    let (mut cfgs, _) = plan(c, &targets)?;
    let cfg = cfgs.pop().ok_or("no connections planned")?;
    let publish = Publish {
        publish_url: a.publish_url.clone(),
        payload: a.payload,
        batch_max: 1000,
        publish_mode: PublishMode::Batch,
        publish_conns: 1,
        warmup: 0.0,
        duration: 0.0,
    };
    let mut pc = publish_cfg(c, &publish, target, (a.rate > 0.0).then_some(a.rate))?;
    pc.record_seqs = true;
    if a.lead > 0.0 && a.rate <= 0.0 {
        return Err("--lead needs a --rate to publish at".into());
    }
    let by_server = a.drop_how == DropHow::Server;
    if by_server && c.server_pids.len() != 1 {
        return Err("--drop server needs one --server-pid: the relay to stop".into());
    }
    if by_server && (a.rate > 0.0 || a.lead > 0.0) {
        return Err(
            "--drop server does not publish (--rate, --lead): the successor starts a new seq space"
                .into(),
        );
    }
    if a.successor.is_some() && !by_server {
        return Err("--successor is for --drop server".into());
    }
    let sc = StormCfg {
        drop: a.drop_how,
        backoff: Backoff {
            base_us: (a.base * 1e6) as u64,
            cap_us: (a.cap * 1e6) as u64,
        },
        deadline: Duration::from_secs_f64(a.deadline),
        seed: a.seed.unwrap_or_else(sys::unix_us),
        marker_wait: Duration::from_secs_f64(c.drain),
        resume: !a.no_resume,
        lead: Duration::from_secs_f64(a.lead),
        honour_retry_after: !a.ignore_retry_after,
    };
    let tty = std::io::stderr().is_terminal();
    let n = c.connections as u64;
    let t0 = Instant::now();
    let mut connect_progress = |_started: u64, ready: u64, failed: u64| {
        if tty {
            eprint!("\rconnecting: {ready}/{n} ready, {failed} failed ");
            let _ = std::io::stderr().flush();
        }
    };
    // The background publisher runs from the drop (or --lead before it)
    // until everyone is back and caught up.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher: std::cell::Cell<Option<std::thread::JoinHandle<PubStats>>> =
        std::cell::Cell::new(None);
    let start_publisher = || {
        if pc.rate.is_some() {
            let (pc, stop) = (pc.clone(), Arc::clone(&stop));
            let end = sys::unix_us() + ((a.lead + a.deadline) * 1e6) as u64;
            publisher.set(Some(std::thread::spawn(move || {
                publisher::run_until(pc, sys::unix_us(), end, &stop)
            })));
        }
    };
    let connected = || {
        if a.lead > 0.0 {
            start_publisher();
        }
    };
    // With --drop server the successor takes the storm, so its CPU is the
    // server's.
    let successor: std::cell::RefCell<Option<Successor>> = std::cell::RefCell::new(None);
    let cpu_pids = std::cell::RefCell::new(c.server_pids.clone());
    let before_drop = || {
        if let Some(cmd) = &a.successor {
            let s = Successor::start(cmd, SUCCESSOR_WAIT)?;
            *cpu_pids.borrow_mut() = vec![s.pid()];
            *successor.borrow_mut() = Some(s);
        }
        Ok(())
    };
    let server0: std::cell::RefCell<Option<ServerCpu>> = std::cell::RefCell::new(None);
    let storm_t0 = std::cell::Cell::new(None);
    let dropped = || {
        storm_t0.set(Some(Instant::now()));
        *server0.borrow_mut() = Some(ServerCpu::start(&cpu_pids.borrow()));
        if a.lead <= 0.0 {
            start_publisher();
        }
        match c.server_pids.first() {
            Some(&pid) if by_server => successor::terminate(pid),
            _ => Ok(()),
        }
    };
    let mut published: Option<PubStats> = None;
    let mut marker_error: Option<String> = None;
    let server_cpu = std::cell::Cell::new(None);
    let mut settled = |_all_back: bool| {
        if let Some(start) = server0.borrow().as_ref() {
            server_cpu.set(ServerCpu::total(&start.by_pid(), cpu_pids.borrow().len()));
        }
        stop.store(true, Ordering::Relaxed);
        published = publisher.take().and_then(|j| j.join().ok());
        if a.no_marker {
            return None;
        }
        let data = format!(r#"{{"t":{},"marker":true}}"#, sys::unix_us());
        match publisher::publish_one(&pc, &data) {
            Ok(seq) => Some(seq),
            Err(e) => {
                marker_error = Some(e);
                None
            }
        }
    };
    let mut progress = |back: u64, clients: u64, attempts: u64| {
        if tty {
            let s = storm_t0.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
            eprint!("\rstorm {s:.1} s: {back}/{clients} back, {attempts} attempts ");
            let _ = std::io::stderr().flush();
        }
    };
    let result = swarm::run_storm(
        cfg,
        &sc,
        &mut connect_progress,
        &mut StormHooks {
            connected: &mut { connected },
            before_drop: &mut { before_drop },
            dropped: &mut { dropped },
            settled: &mut settled,
            progress: &mut progress,
        },
    );
    if tty {
        eprintln!();
    }
    let successor_pid = successor.borrow().as_ref().map(Successor::pid);
    if let Some(s) = successor.take() {
        if !s.stop(SUCCESSOR_WAIT) {
            eprintln!("the successor did not exit on SIGTERM: killed");
        }
    }
    let run = result?;
    let (summary, marker) = (&run.summary, &run.marker);
    let mut seqs = published
        .as_ref()
        .map(|p| p.seqs.clone())
        .unwrap_or_default();
    seqs.extend(marker.as_ref().map(|m| m.seq));
    seqs.sort_unstable();
    seqs.dedup();
    let resume = resume::summarize(
        run.tracks.iter().map(|(t, open)| (t, *open)),
        resume::SummaryInput {
            resume: sc.resume,
            drop_unix_us: run.drop_unix_us,
            drop_seq: run.drop_seq,
            end_seq: marker
                .as_ref()
                .map(|m| m.seq)
                .or(seqs.last().copied())
                .unwrap_or(0),
            published: &seqs,
            replies: run.replies.clone(),
        },
    );
    let cs = report::connect_summary(&run.connect);
    let mut t = Table::new();
    report::connect_rows(&mut t, &cs);
    report::storm_rows(&mut t, summary);
    if let Some(p) = &published {
        t.row(
            "published",
            format!(
                "{} events ({} rejected, {} unsent) at {} /s{}",
                p.accepted,
                p.rejected,
                p.unsent,
                a.rate,
                if a.lead > 0.0 {
                    format!(", from {} s before the drop", a.lead)
                } else {
                    String::new()
                }
            ),
        );
    }
    match (marker, &marker_error) {
        (Some(m), _) => t.row(
            "final marker",
            format!(
                "seq {}: received by {} of {} clients ({} open), {} missing, {:.3} s",
                m.seq, m.received, summary.clients, m.open, m.missing, m.wait_s
            ),
        ),
        (None, Some(e)) => t.row("final marker", format!("not published: {e}")),
        (None, None) => {}
    }
    report::resume_rows(&mut t, &resume);
    if let Some(s) = server_cpu.get() {
        let whose = if successor_pid.is_some() {
            "successor"
        } else {
            "server"
        };
        t.row(
            &format!("{whose} CPU"),
            format!(
                "{s:.2} s during the storm, {:.1} µs per client back",
                s * 1e6 / summary.back.max(1) as f64
            ),
        );
    }
    t.print();
    if let Some(path) = &a.plot {
        let title = format!(
            "tidings storm ({}): {} clients, upgrades per 100 ms",
            summary_label(&a, summary),
            summary.clients
        );
        let x_desc = if by_server {
            "seconds after the SIGTERM"
        } else {
            "seconds after the drop"
        };
        match crate::plot::write_curve(path, &summary.accepts_per_100ms, 0.1, &title, x_desc) {
            Ok(n) => eprintln!("  plot: {} ({n} buckets)", path.display()),
            Err(e) => eprintln!("  plot: not written: {e}"),
        }
    }
    let mut head = json!({
        "mode": "storm",
        "url": c.urls.first(),
        "urls": c.urls,
        "channel": c.channel,
        "pattern": c.pattern.clone().unwrap_or_else(|| c.channel.clone()),
        "connections_requested": c.connections,
        "members": 1,
        "server_pid": c.server_pids.first(),
        "server_pids": c.server_pids,
        "unix_time_s": sys::unix_us() / 1_000_000,
        "seed": sc.seed,
        "lead_s": a.lead,
        "rate": a.rate,
        "honour_retry_after": sc.honour_retry_after,
        "successor": a.successor,
        "successor_pid": successor_pid,
    });
    head["connect"] = json!(cs);
    head["storm"] = json!(summary);
    head["marker"] = json!(marker);
    head["marker_error"] = json!(marker_error);
    head["publish"] = json!(published);
    head["resume"] = json!(resume);
    head["server_cpu_s"] = json!(server_cpu.get());
    head["swarm_cpu_total_s"] = json!(total_cpu());
    head["seconds"] = json!(t0.elapsed().as_secs_f64());
    report::emit(&head);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn common(args: &[&str]) -> Common {
        let mut argv = vec!["tidings-swarm", "idle"];
        argv.extend_from_slice(args);
        match crate::cli::Cli::parse_from(argv).mode {
            crate::cli::Mode::Idle(a) => a.common,
            _ => unreachable!(),
        }
    }

    #[test]
    fn connections_go_round_robin_over_the_urls_across_members() {
        let c = common(&[
            "--url",
            "ws://127.0.0.1:9001/ws",
            "--url",
            "ws://127.0.0.1:9002/ws",
            "--url",
            "ws://127.0.0.1:9003/ws",
            "--connections",
            "10",
            "--processes",
            "2",
        ]);
        let targets = parse_ws_urls(&c.urls).unwrap_or_else(|e| panic!("{e}"));
        let (cfgs, processes) = plan(&c, &targets).unwrap_or_else(|e| panic!("{e}"));
        assert!(processes);
        let ports: Vec<u16> = cfgs
            .iter()
            .flat_map(|cfg| (0..cfg.connections).map(move |i| cfg.target(i).addr.port()))
            .collect();
        // The second member starts at the sixth socket: it goes on where
        // the first left off, so the shares stay even (4, 3, 3).
        assert_eq!(
            ports,
            [9001, 9002, 9003, 9001, 9002, 9003, 9001, 9002, 9003, 9001]
        );
    }

    #[test]
    fn server_cpu_is_summed_only_when_every_pid_was_read() {
        let me = std::process::id();
        let start = ServerCpu::start(&[me]);
        let by_pid = start.by_pid();
        assert_eq!(by_pid.len(), 1);
        assert!(ServerCpu::total(&by_pid, 1).is_some_and(|s| s >= 0.0));
        // A pid that does not exist (above the kernel's pid_max) is unreadable.
        let gone = ServerCpu::start(&[me, u32::MAX]);
        assert_eq!(gone.by_pid().len(), 1);
        assert_eq!(ServerCpu::total(&gone.by_pid(), 2), None);
        assert_eq!(ServerCpu::total(&BTreeMap::new(), 0), None);
    }
}
