//! Crash repair of raw ADTS recordings made with our own framing.

use liverec_aac::repair::repair;
use liverec_aac::{split_frames, AdtsParams};

/// `frames` ADTS frames of varying size (LC, the given ASC), as the `.aac` recorder
/// writes them; returns the bytes and each frame's start.
fn recording(asc: [u8; 2], frames: usize) -> (Vec<u8>, Vec<usize>) {
    let p = AdtsParams::from_asc(&asc).unwrap();
    let (mut out, mut starts) = (Vec::new(), Vec::new());
    for i in 0..frames {
        starts.push(out.len());
        let payload = vec![0x21; 100 + (i * 53) % 700];
        out.extend_from_slice(&p.header(payload.len()).unwrap());
        out.extend_from_slice(&payload);
    }
    (out, starts)
}

#[test]
fn a_complete_file_is_kept_whole() {
    let (file, _) = recording([0x11, 0x90], 470);
    let r = repair(&file).unwrap();
    assert_eq!(r.keep_len, file.len() as u64);
    assert!(r.patches.is_empty());
    // 470 frames of 1024 samples at 48 kHz.
    assert_eq!(r.duration_ms, 470 * 1024 * 1000 / 48000);
    assert_eq!(split_frames(&file).len(), 470);
}

#[test]
fn a_file_cut_mid_frame_goes_back_to_the_last_whole_frame() {
    // 44.1 kHz, so the duration is not a whole number of ms per frame.
    let (file, starts) = recording([0x12, 0x10], 200);
    let last = *starts.last().unwrap();
    for cut in last + 1..file.len() {
        let r = repair(&file[..cut]).unwrap();
        assert_eq!(r.keep_len, last as u64, "cut at {cut}");
        assert_eq!(r.duration_ms, 199 * 1024 * 1000 / 44100);
        // What is kept splits into exactly the whole frames.
        assert_eq!(split_frames(&file[..last]).len(), 199);
    }
    // Less than one header: nothing to keep.
    assert_eq!(repair(&file[..6]).unwrap().keep_len, 0);
    assert_eq!(repair(&[][..]).unwrap(), Default::default());
}

#[test]
fn frames_count_their_blocks_and_their_own_rate() {
    let p48 = AdtsParams::from_asc(&[0x11, 0x90]).unwrap();
    let p22 = AdtsParams::from_asc(&[0x13, 0x90]).unwrap();
    assert_eq!(p22.sample_rate, 22050);
    let mut file = Vec::new();
    for _ in 0..10 {
        file.extend_from_slice(&p48.header(200).unwrap());
        file.extend_from_slice(&[0; 200]);
    }
    // A frame of 4 raw data blocks (the low two bits of the last header byte).
    let mut h = p48.header(300).unwrap();
    h[6] |= 3;
    file.extend_from_slice(&h);
    file.extend_from_slice(&[0; 300]);
    for _ in 0..5 {
        file.extend_from_slice(&p22.header(200).unwrap());
        file.extend_from_slice(&[0; 200]);
    }
    let r = repair(&file).unwrap();
    assert_eq!(r.keep_len, file.len() as u64);
    assert_eq!(
        r.duration_ms,
        14 * 1024 * 1000 / 48000 + 5 * 1024 * 1000 / 22050
    );
}

#[test]
fn garbage_ends_the_file() {
    let (mut file, _) = recording([0x11, 0x90], 20);
    let whole = file.len() as u64;
    // Zeroes a file system may show after a power loss.
    file.extend_from_slice(&[0; 4096]);
    assert_eq!(repair(&file).unwrap().keep_len, whole);
    // A header with a reserved sampling frequency index (13).
    let (mut file, starts) = recording([0x11, 0x90], 20);
    let at = starts[10] + 2;
    file[at] = (file[at] & !0x3c) | (13 << 2);
    assert_eq!(repair(&file).unwrap().keep_len, starts[10] as u64);
    // A frame length shorter than its own header (with CRC: 9 bytes).
    let (mut file, starts) = recording([0x11, 0x90], 20);
    let h = starts[5];
    file[h + 1] &= !1; // protection_absent = 0
    file[h + 3] &= !3;
    file[h + 4] = 1;
    file[h + 5] = 0; // frame_length = 8
    assert_eq!(repair(&file).unwrap().keep_len, starts[5] as u64);
}
