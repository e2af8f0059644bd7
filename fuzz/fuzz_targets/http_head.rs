//! Any bytes as an HTTP request head: parsing and the upgrade check must
//! never panic, and a complete head never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
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
    }
});
