//! The bytes after the handshake through the session's frame reader.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard::fuzzing::frames(data));
}
