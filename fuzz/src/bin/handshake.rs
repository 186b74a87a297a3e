//! An HTTP request head through the WebSocket handshake's checks.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard::fuzzing::handshake(data));
}
