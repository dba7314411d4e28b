//! Arbitrary response bytes, cut into arbitrary pieces, into hyper's client and into
//! `longhaul::h1`: the outcomes must agree as tests/support/h1_oracle.rs `agree` defines.
//!
//! Input layout: byte 0 bit 0 = the request is HEAD (else GET); byte 1 = how many cut points
//! follow (mod 8), each two bytes (little-endian, taken modulo the wire's length + 1); the rest
//! is the response as the backend sends it. seeds/h1_response/ holds well-formed starting points.
#![no_main]

#[path = "../../tests/support/h1_oracle.rs"]
mod oracle;

use http::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Some((&count, rest)) = rest.split_first() else { return };
    let cut_bytes = usize::from(count % 8) * 2;
    if rest.len() < cut_bytes {
        return;
    }
    let (cuts, wire) = rest.split_at(cut_bytes);
    let mut at: Vec<usize> = cuts
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (wire.len() + 1))
        .collect();
    at.extend([0, wire.len()]);
    at.sort_unstable();
    let pieces: Vec<Vec<u8>> = at.windows(2).map(|w| wire[w[0]..w[1]].to_vec()).collect();
    let method = if flags & 1 == 1 { Method::HEAD } else { Method::GET };
    let (hyper, ours) = oracle::run(&method, &pieces);
    if let Err(why) = oracle::agree(&hyper, &ours) {
        panic!("{method} {:?}\n{why}", String::from_utf8_lossy(wire));
    }
});
