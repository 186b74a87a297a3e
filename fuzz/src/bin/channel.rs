//! A channel name through the channel rules.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard::fuzzing::channel(data));
}
