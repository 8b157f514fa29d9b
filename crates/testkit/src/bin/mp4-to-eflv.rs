//! `mp4-to-eflv IN.mp4 OUT.flv`: rewrites an MP4 (HEVC or AV1 video, AAC audio) as an
//! Enhanced RTMP FLV file (see `liverec_testkit::eflv`) and prints what our own FLV reader
//! finds in the result (one line). Used by `fixtures/make.sh`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        eprintln!("usage: mp4-to-eflv IN.mp4 OUT.flv");
        return ExitCode::from(2);
    };
    let data = match std::fs::read(input) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mp4-to-eflv: cannot read {input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let flv = match liverec_testkit::eflv::mp4_to_eflv(&data) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mp4-to-eflv: {input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(output, &flv) {
        eprintln!("mp4-to-eflv: cannot write {output}: {e}");
        return ExitCode::FAILURE;
    }
    let s = liverec_testkit::probe::flv_summary_bytes(flv.into());
    if let Some(e) = &s.read_error {
        eprintln!("mp4-to-eflv: {output} does not read back: {e}");
        return ExitCode::FAILURE;
    }
    // Video frames by E-RTMP packet type: 1 CodedFrames, 3 CodedFramesX.
    let bodies = liverec_testkit::probe::flv_tags(std::path::Path::new(output));
    let coded = |pt: u8| {
        bodies
            .iter()
            .filter(|t| t.tag_type == flv::TagType::Video)
            .filter(|t| {
                t.body
                    .first()
                    .is_some_and(|b| b & 0x80 != 0 && b & 0x0f == pt)
            })
            .count()
    };
    println!(
        "{} bytes; video frames {} ({} key; CodedFrames {}, CodedFramesX {}), audio frames {}, onMetaData duration {:.3} s",
        s.file_size,
        s.video_frames,
        s.video_keyframes,
        coded(1),
        coded(3),
        s.audio_frames,
        s.duration.unwrap_or(0.0)
    );
    ExitCode::SUCCESS
}
