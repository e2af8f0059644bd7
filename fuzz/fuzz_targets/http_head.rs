//! Any bytes as an HTTP request head: parsing and the upgrade check must
//! never panic, and a complete head never claims more bytes than it was given.
//! What follows the head is also read as a chunked body, which never
//! consumes more than it was given nor decodes more than its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::proto::chunked::{ChunkLimits, ChunkedBody};
use tidings::proto::handshake::{check_upgrade, parse_head};
use tidings::proto::http::{parse_publish_body, route};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(head)) = parse_head(data, 8192, 64) {
        assert!(head.len <= data.len());
        let _ = route(&head.method, &head.path);
        if let Ok(upgrade) = check_upgrade(&head) {
            let response = upgrade.response();
            assert!(response.starts_with(b"HTTP/1.1 101 "));
        }
        let _ = parse_publish_body(&data[head.len..]);
        let limits = ChunkLimits {
            max_body: 256,
            max_line: 64,
        };
        let mut body = ChunkedBody::default();
        if let Ok(used) = body.decode(&data[head.len..], limits) {
            assert!(used <= data.len() - head.len);
            assert!(body.body().len() <= 256);
        }
    }
});
