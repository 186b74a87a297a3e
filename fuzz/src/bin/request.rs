//! A client frame (JSON text) through the request parser.

fn main() {
    afl::fuzz!(|data: &[u8]| switchyard::fuzzing::request(data));
}
