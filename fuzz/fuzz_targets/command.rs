//! Any text as a client command: parsing never panics, and every error
//! reply is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::proto::command::{parse_command, reply_error};

fuzz_target!(|text: &str| {
    if let Err(error) = parse_command(text) {
        let reply = reply_error(&error);
        assert!(serde_json::from_str::<serde_json::Value>(&reply).is_ok());
    }
});
