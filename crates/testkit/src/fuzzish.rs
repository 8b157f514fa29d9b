//! Byte-level mutations for the seeded "fuzzish" tests of the format crates' repair
//! scanners (the cargo-fuzz targets under each crate's `fuzz/` go further). Seeded, so a
//! failure reproduces from its seed on every machine.

use rand::Rng;

/// One to seven mutations of `data`: a random byte, a bit flip, one of `interesting`
/// (boundary values and the format's own marker bytes, e.g. the TS sync byte), a deletion
/// of up to 63 bytes, and with `unit` also the deletion of one whole aligned unit (a TS
/// packet), which keeps the rest of the file aligned.
pub fn mutate<R: Rng + ?Sized>(
    rng: &mut R,
    data: &mut Vec<u8>,
    interesting: &[u8],
    unit: Option<usize>,
) {
    let kinds = if unit.is_some() { 5 } else { 4 };
    for _ in 0..rng.random_range(1..8) {
        if data.is_empty() {
            return;
        }
        let i = rng.random_range(0..data.len());
        match rng.random_range(0..kinds) {
            0 => data[i] = rng.random(),
            1 => data[i] ^= 1 << rng.random_range(0..8),
            2 => {
                if !interesting.is_empty() {
                    data[i] = interesting[rng.random_range(0..interesting.len())];
                }
            }
            3 => {
                let j = (i + rng.random_range(0..64)).min(data.len());
                data.drain(i..j);
            }
            _ => {
                let unit = unit.unwrap_or(1).max(1);
                let at = i - i % unit;
                let j = (at + unit).min(data.len());
                data.drain(at..j);
            }
        }
    }
}
