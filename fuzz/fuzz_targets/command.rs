//! Any text as a client command: parsing never panics, and every error
//! reply, with the command's id echoed, is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::proto::command::{parse_command, reply_error};

fuzz_target!(|text: &str| {
    let request = parse_command(text, 64);
    if let Err(error) = request.command {
        let reply = reply_error(&error, request.id.as_ref());
        assert!(serde_json::from_str::<serde_json::Value>(&reply).is_ok());
    }
});
