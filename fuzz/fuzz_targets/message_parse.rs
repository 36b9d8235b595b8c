//! Message parsing never panics, and agrees with itself: whatever `parse`
//! accepts has the length of its type, and the hot-path transport check
//! accepts exactly the transport messages `parse` accepts.
#![no_main]

use corewire_dataplane::proto::messages::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = messages::parse(data);
    match &parsed {
        Ok(Message::Initiation(_)) => assert_eq!(data.len(), messages::INITIATION_LEN),
        Ok(Message::Response(_)) => assert_eq!(data.len(), messages::RESPONSE_LEN),
        Ok(Message::CookieReply(_)) => assert_eq!(data.len(), messages::COOKIE_REPLY_LEN),
        Ok(Message::Transport(h, body)) => {
            assert_eq!(messages::transport_receiver(data), Some(h.receiver.get()));
            assert_eq!(body.len() + messages::TRANSPORT_HEADER_LEN, data.len());
        }
        Err(_) => assert_eq!(messages::transport_receiver(data), None),
    }
    if parsed.is_ok() {
        assert!(messages::message_type(data).is_ok());
    }
});
