//! The crash-repair scanner on arbitrary bytes: it never panics, stays inside the file,
//! and its result repaired again is unchanged (`check_fixed_point`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use liverec_media::repair::check_fixed_point;
use liverec_mpegts::repair::repair;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_fixed_point(data, repair) {
        panic!("{e}");
    }
});
