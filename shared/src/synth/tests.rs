use super::*;
use crate::flv::Demuxer;

#[test]
fn stream_demuxes_with_expected_structure() {
    let mut s = Synth::new(SynthConfig::default());
    let bytes = s.stream_bytes(2000);
    let mut d = Demuxer::new(1 << 20);
    d.push(&bytes);
    let mut tags = Vec::new();
    while let Some(t) = d.next_tag().unwrap() {
        tags.push(t);
    }
    d.finish().unwrap();
    assert!(tags[0].is_metadata());
    assert!(tags[1].is_sequence_header() && tags[1].is_video());
    assert!(tags[2].is_sequence_header() && tags[2].is_audio());
    let video: Vec<_> = tags[3..].iter().filter(|t| t.is_video()).collect();
    assert_eq!(video.len(), 51); // frames 0..=50 at 25 fps up to 2000 ms
    assert!(video[0].is_coded_keyframe());
    assert!(video[50].is_coded_keyframe());
    assert!(!video[1].is_keyframe());
    for (i, v) in video.iter().enumerate() {
        assert_eq!(frame_seq(v), Some(i as u64));
    }
}

#[test]
fn video_bitrate_matches_the_configuration() {
    for (kbps, fps, gop) in [
        (1000, 25, 50),
        (2000, 30, 60),
        (300, 10, 1),
        (5000, 60, 120),
    ] {
        let mut s = Synth::new(SynthConfig {
            bitrate_kbps: kbps,
            fps,
            gop_frames: gop,
            audio: false,
            ..SynthConfig::default()
        });
        // Four whole GOPs.
        let frames = u64::from(gop) * 4;
        let ms = (frames * 1000 / u64::from(fps)) as u32;
        let tags = s.next_tags(ms - 1);
        assert_eq!(tags.len() as u64, frames);
        let bytes: usize = tags.iter().map(|t| t.body.len()).sum();
        let got_kbps = bytes as f64 * 8.0 / f64::from(ms);
        let want = f64::from(kbps);
        assert!(
            (got_kbps - want).abs() / want < 0.03,
            "{kbps} kbps {fps} fps gop {gop}: got {got_kbps:.1}"
        );
        let keys = tags.iter().filter(|t| t.is_coded_keyframe()).count();
        assert_eq!(keys, 4);
    }
}

#[test]
fn pacing_is_by_media_time() {
    let mut s = Synth::new(SynthConfig::default());
    assert_eq!(s.next_ts(), 0);
    let first = s.next_tags(100);
    assert!(first.iter().all(|t| t.timestamp_ms <= 100));
    assert!(
        first
            .windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms)
    );
    // 0, 40, 80 ms video; 0, 23, 46, 69, 92 ms audio.
    assert_eq!(first.iter().filter(|t| t.is_video()).count(), 3);
    assert_eq!(first.iter().filter(|t| t.is_audio()).count(), 5);
    assert!(first[0].is_video(), "video first on a tie at 0 ms");
    assert!(
        s.next_tags(100).is_empty(),
        "nothing new until time moves on"
    );
    assert!(s.next_ts() > 100);
    let second = s.next_tags(1000);
    assert!(second[0].timestamp_ms > 100);
    assert_eq!(s.frames(), 26);
    // One second of audio is ~43 frames.
    let audio = first.iter().chain(&second).filter(|t| t.is_audio()).count();
    assert_eq!(audio, 44); // frames at 0..=998 ms
    // A huge jump is cut into bounded batches.
    assert_eq!(s.next_tags(i32::MAX as u32).len(), MAX_TAGS_PER_CALL);
    // A time behind the generator yields nothing (no wrap-around burst).
    assert!(s.next_tags(500).is_empty());
}

#[test]
fn timestamps_wrap_at_32_bits_and_generation_goes_on() {
    let mut s = Synth::new(SynthConfig {
        fps: 25,
        audio: false,
        ..SynthConfig::default()
    });
    // Frame 107374182 is at 4294967280 ms, 16 ms before the wrap.
    s.video_frame = 107_374_182;
    assert_eq!(s.next_ts(), 4_294_967_280);
    let tags = s.next_tags(100); // 100 ms after the wrap
    let ts: Vec<u32> = tags.iter().map(|t| t.timestamp_ms).collect();
    assert_eq!(ts, vec![4_294_967_280, 24, 64]);
}

#[test]
fn config_is_clamped_and_audio_optional() {
    let s = Synth::new(SynthConfig {
        bitrate_kbps: 0,
        fps: 0,
        gop_frames: 0,
        audio: false,
        width: 7,
        height: 99_999,
    });
    let c = s.config();
    assert_eq!((c.bitrate_kbps, c.fps, c.gop_frames), (1, 1, 1));
    assert_eq!((c.width, c.height), (16, 4096));
    assert_eq!(
        s.file_header(),
        FileHeader {
            has_audio: false,
            has_video: true
        }
    );
    let h = s.header_tags();
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|t| !t.is_audio()));
    let odd = Synth::new(SynthConfig {
        width: 321,
        height: 241,
        ..SynthConfig::default()
    });
    assert_eq!((odd.config().width, odd.config().height), (322, 242));
}

#[test]
fn frame_seq_survives_emulation_prevention_and_ignores_other_tags() {
    let mut s = Synth::new(SynthConfig {
        fps: 240,
        audio: false,
        ..SynthConfig::default()
    });
    // Sequence numbers with 00 00 0x byte runs need emulation prevention.
    s.video_frame = 0x0000_0001_0000_0003;
    let t = s.next_tags(s.next_ts())[0].clone();
    assert_eq!(frame_seq(&t), Some(0x0000_0001_0000_0003));
    assert_eq!(frame_seq(&s.header_tags()[1]), None);
    assert_eq!(
        frame_seq(&Tag::new(
            TagKind::Video,
            0,
            Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 9])
        )),
        None
    );
    assert_eq!(
        frame_seq(&Tag::new(TagKind::Audio, 0, silent_aac_frame())),
        None
    );
}

#[test]
fn exp_golomb_codes() {
    let mut w = BitWriter::default();
    w.ue(0); // 1
    w.ue(1); // 010
    w.ue(2); // 011
    w.ue(3); // 00100
    w.se(0); // 1
    w.se(1); // 010
    w.se(-1); // 011
    assert_eq!(w.finish_rbsp(), vec![0b1010_0110, 0b0100_1010, 0b0111_0000]);
    assert_eq!(
        nal(0x06, vec![0, 0, 1, 0, 0, 0, 0]),
        vec![6, 0, 0, 3, 1, 0, 0, 3, 0, 0]
    );
    assert_eq!(
        unescape(&[0, 0, 3, 1, 0, 0, 3, 0, 0]),
        vec![0, 0, 1, 0, 0, 0, 0]
    );
}
