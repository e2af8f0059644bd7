//! What `wss://` costs the relay per delivered frame: encrypting queued
//! frames with rustls (AES-GCM, TLS 1.3) against handing them to the kernel
//! as they are. Both write into memory, so only the relay's own CPU shows.
//!
//! `cargo bench --bench tls`; figures are recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::io::{IoSlice, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use serde_json::json;
use tidings::Event;

/// A server session that has finished its handshake with an in-memory client.
fn established_session() -> ServerConnection {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root");
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = ServerConnection::new(Arc::new(server_config)).expect("server");
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = ClientConnection::new(Arc::new(client_config), name).expect("client");
    for _ in 0..20 {
        if !server.is_handshaking() && !client.is_handshaking() {
            return server;
        }
        let mut wire = Vec::new();
        client.write_tls(&mut wire).expect("client writes");
        server.read_tls(&mut wire.as_slice()).expect("server reads");
        server.process_new_packets().expect("server processes");
        let mut wire = Vec::new();
        server.write_tls(&mut wire).expect("server writes");
        client.read_tls(&mut wire.as_slice()).expect("client reads");
        client.process_new_packets().expect("client processes");
    }
    panic!("handshake did not finish");
}

fn flushing(c: &mut Criterion) {
    let frame = Event::new(
        "job.progress",
        &json!({"jobId": "import-abc123", "jobType": "import", "progress": 0.45,
                "processed": 450000, "total": 1000000, "rate": 15000, "eta_seconds": 37}),
    )
    .expect("event")
    .encode(SystemTime::now())
    .frame(1);
    let mut server = established_session();
    let mut group = c.benchmark_group("socket_write");
    for frames in [1usize, 16] {
        group.throughput(Throughput::Elements(frames as u64));
        let slices: Vec<IoSlice<'_>> = (0..frames).map(|_| IoSlice::new(&frame)).collect();
        group.bench_with_input(BenchmarkId::new("plain", frames), &frames, |b, _| {
            let mut sink = Vec::with_capacity(64 * 1024);
            b.iter(|| {
                sink.clear();
                black_box(sink.write_vectored(&slices).expect("memory"))
            })
        });
        group.bench_with_input(BenchmarkId::new("tls", frames), &frames, |b, _| {
            let mut sink = Vec::with_capacity(64 * 1024);
            b.iter(|| {
                sink.clear();
                let taken = server.writer().write_vectored(&slices).expect("buffer");
                assert_eq!(taken, frame.len() * frames, "rustls took every frame");
                while server.wants_write() {
                    server.write_tls(&mut sink).expect("memory");
                }
                black_box(sink.len())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = flushing
}
criterion_main!(benches);
