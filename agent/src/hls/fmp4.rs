//! Fragmented MP4 (ISO BMFF, CMAF-style) for LL-HLS: the initialization
//! segment (`ftyp` + `moov` with one H.264 and/or one AAC track) and media
//! fragments (`moof` + `mdat`, one per LL-HLS part). Pure code.
//!
//! Both tracks use a 1 ms timescale: the relay's timeline is in
//! milliseconds (FLV timestamps), so sample durations are exact
//! differences of timestamps and never drift. Video samples are the FLV
//! AVC payloads as they are (length-prefixed NAL units, which is what
//! `avc1` samples are); audio samples are raw AAC frames.

use bytes::{BufMut, Bytes, BytesMut};

/// Track ids in the init segment.
pub const VIDEO_TRACK: u32 = 1;
pub const AUDIO_TRACK: u32 = 2;
const TIMESCALE: u32 = 1000;

/// An H.264 track: the `AVCDecoderConfigurationRecord` and picture size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTrack {
    pub avcc: Bytes,
    pub width: u16,
    pub height: u16,
}

impl VideoTrack {
    /// The RFC 6381 codec string (`avc1.64001f`).
    pub fn codec(&self) -> String {
        match self.avcc.get(1..4) {
            Some(p) => format!("avc1.{:02x}{:02x}{:02x}", p[0], p[1], p[2]),
            None => "avc1".into(),
        }
    }
}

/// An AAC track: the `AudioSpecificConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTrack {
    pub asc: Bytes,
}

const RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

impl AudioTrack {
    /// (audio object type, sample rate, channels) from the config.
    pub fn params(&self) -> (u8, u32, u16) {
        let b0 = self.asc.first().copied().unwrap_or(0x12);
        let b1 = self.asc.get(1).copied().unwrap_or(0x10);
        let aot = b0 >> 3;
        let idx = usize::from(((b0 & 0x07) << 1) | (b1 >> 7));
        let rate = RATES.get(idx).copied().unwrap_or(44100);
        let channels = u16::from((b1 >> 3) & 0x0F).max(1);
        (aot.max(1), rate, channels)
    }

    pub fn codec(&self) -> String {
        format!("mp4a.40.{}", self.params().0)
    }
}

/// One sample of a fragment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Decode time, ms.
    pub dts: i64,
    pub duration: u32,
    /// Presentation minus decode time, ms (video).
    pub cts: i32,
    pub keyframe: bool,
    pub data: Bytes,
}

fn boxed(kind: &[u8; 4], body: &[u8], out: &mut BytesMut) {
    out.put_u32((8 + body.len()) as u32);
    out.put_slice(kind);
    out.put_slice(body);
}

fn full(kind: &[u8; 4], version: u8, flags: u32, body: &[u8], out: &mut BytesMut) {
    let mut b = BytesMut::with_capacity(4 + body.len());
    b.put_u32((u32::from(version) << 24) | (flags & 0x00FF_FFFF));
    b.put_slice(body);
    boxed(kind, &b, out);
}

fn matrix(b: &mut BytesMut) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        b.put_u32(v);
    }
}

/// `ftyp` + `moov` for these tracks.
pub fn init_segment(video: Option<&VideoTrack>, audio: Option<&AudioTrack>) -> Bytes {
    let mut out = BytesMut::with_capacity(1024);
    let mut ftyp = BytesMut::new();
    ftyp.put_slice(b"iso6");
    ftyp.put_u32(0);
    for brand in [b"iso6", b"cmfc", b"mp41", b"dash"] {
        ftyp.put_slice(brand);
    }
    boxed(b"ftyp", &ftyp, &mut out);

    let mut moov = BytesMut::new();
    let mut mvhd = BytesMut::new();
    mvhd.put_u32(0); // creation
    mvhd.put_u32(0); // modification
    mvhd.put_u32(TIMESCALE);
    mvhd.put_u32(0); // duration
    mvhd.put_u32(0x0001_0000); // rate
    mvhd.put_u16(0x0100); // volume
    mvhd.put_bytes(0, 10);
    matrix(&mut mvhd);
    mvhd.put_bytes(0, 24);
    mvhd.put_u32(3); // next track id
    full(b"mvhd", 0, 0, &mvhd, &mut moov);
    if let Some(v) = video {
        trak(VIDEO_TRACK, Some(v), None, &mut moov);
    }
    if let Some(a) = audio {
        trak(AUDIO_TRACK, None, Some(a), &mut moov);
    }
    let mut mvex = BytesMut::new();
    for (id, present) in [
        (VIDEO_TRACK, video.is_some()),
        (AUDIO_TRACK, audio.is_some()),
    ] {
        if present {
            let mut trex = BytesMut::new();
            trex.put_u32(id);
            trex.put_u32(1); // sample description index
            trex.put_u32(0);
            trex.put_u32(0);
            trex.put_u32(0);
            full(b"trex", 0, 0, &trex, &mut mvex);
        }
    }
    boxed(b"mvex", &mvex, &mut moov);
    boxed(b"moov", &moov, &mut out);
    out.freeze()
}

fn trak(id: u32, video: Option<&VideoTrack>, audio: Option<&AudioTrack>, out: &mut BytesMut) {
    let mut trak = BytesMut::new();
    let mut tkhd = BytesMut::new();
    tkhd.put_u32(0);
    tkhd.put_u32(0);
    tkhd.put_u32(id);
    tkhd.put_u32(0);
    tkhd.put_u32(0); // duration
    tkhd.put_bytes(0, 8);
    tkhd.put_u16(0); // layer
    tkhd.put_u16(if audio.is_some() { 1 } else { 0 }); // alternate group
    tkhd.put_u16(if audio.is_some() { 0x0100 } else { 0 });
    tkhd.put_u16(0);
    matrix(&mut tkhd);
    let (w, h) = video.map_or((0, 0), |v| (v.width, v.height));
    tkhd.put_u32(u32::from(w) << 16);
    tkhd.put_u32(u32::from(h) << 16);
    full(b"tkhd", 0, 3, &tkhd, &mut trak);

    let mut mdia = BytesMut::new();
    let mut mdhd = BytesMut::new();
    mdhd.put_u32(0);
    mdhd.put_u32(0);
    mdhd.put_u32(TIMESCALE);
    mdhd.put_u32(0);
    mdhd.put_u16(0x55C4); // 'und'
    mdhd.put_u16(0);
    full(b"mdhd", 0, 0, &mdhd, &mut mdia);
    let mut hdlr = BytesMut::new();
    hdlr.put_u32(0);
    hdlr.put_slice(if video.is_some() { b"vide" } else { b"soun" });
    hdlr.put_bytes(0, 12);
    hdlr.put_slice(if video.is_some() {
        b"VideoHandler\0"
    } else {
        b"SoundHandler\0"
    });
    full(b"hdlr", 0, 0, &hdlr, &mut mdia);

    let mut minf = BytesMut::new();
    if video.is_some() {
        full(b"vmhd", 0, 1, &[0u8; 8], &mut minf);
    } else {
        full(b"smhd", 0, 0, &[0u8; 4], &mut minf);
    }
    let mut dinf = BytesMut::new();
    let mut dref = BytesMut::new();
    dref.put_u32(1);
    full(b"url ", 0, 1, &[], &mut dref);
    full(b"dref", 0, 0, &dref, &mut dinf);
    boxed(b"dinf", &dinf, &mut minf);

    let mut stbl = BytesMut::new();
    let mut stsd = BytesMut::new();
    stsd.put_u32(1);
    if let Some(v) = video {
        let mut avc1 = BytesMut::new();
        avc1.put_bytes(0, 6);
        avc1.put_u16(1); // data reference index
        avc1.put_bytes(0, 16);
        avc1.put_u16(v.width);
        avc1.put_u16(v.height);
        avc1.put_u32(0x0048_0000);
        avc1.put_u32(0x0048_0000);
        avc1.put_u32(0);
        avc1.put_u16(1); // frame count
        avc1.put_bytes(0, 32); // compressor name
        avc1.put_u16(0x0018);
        avc1.put_i16(-1);
        boxed(b"avcC", &v.avcc, &mut avc1);
        boxed(b"avc1", &avc1, &mut stsd);
    }
    if let Some(a) = audio {
        let (_, rate, channels) = a.params();
        let mut mp4a = BytesMut::new();
        mp4a.put_bytes(0, 6);
        mp4a.put_u16(1);
        mp4a.put_bytes(0, 8);
        mp4a.put_u16(channels);
        mp4a.put_u16(16);
        mp4a.put_u32(0);
        mp4a.put_u32(rate.min(65535) << 16);
        esds(&a.asc, &mut mp4a);
        boxed(b"mp4a", &mp4a, &mut stsd);
    }
    full(b"stsd", 0, 0, &stsd, &mut stbl);
    for kind in [b"stts", b"stsc", b"stco"] {
        full(kind, 0, 0, &[0u8; 4], &mut stbl);
    }
    full(b"stsz", 0, 0, &[0u8; 8], &mut stbl);
    boxed(b"stbl", &stbl, &mut minf);
    boxed(b"minf", &minf, &mut mdia);
    boxed(b"mdia", &mdia, &mut trak);
    boxed(b"trak", &trak, out);
}

/// `esds` with the decoder config descriptor around the AAC config.
fn esds(asc: &[u8], out: &mut BytesMut) {
    let asc_len = asc.len().min(64) as u8;
    let mut b = BytesMut::new();
    // ES_Descriptor
    b.put_u8(0x03);
    b.put_u8(23 + asc_len);
    b.put_u16(0); // ES id
    b.put_u8(0);
    // DecoderConfigDescriptor
    b.put_u8(0x04);
    b.put_u8(15 + asc_len);
    b.put_u8(0x40); // MPEG-4 audio
    b.put_u8(0x15); // audio stream
    b.put_bytes(0, 3); // buffer size
    b.put_u32(0); // max bitrate
    b.put_u32(0); // avg bitrate
    // DecoderSpecificInfo
    b.put_u8(0x05);
    b.put_u8(asc_len);
    b.put_slice(&asc[..usize::from(asc_len)]);
    // SLConfigDescriptor
    b.put_u8(0x06);
    b.put_u8(1);
    b.put_u8(0x02);
    full(b"esds", 0, 0, &b, out);
}

/// `moof` + `mdat` of one fragment: sequence number `seq`, video and
/// audio samples (either may be empty).
pub fn fragment(seq: u32, video: &[Sample], audio: &[Sample]) -> Bytes {
    let tracks: Vec<(u32, &[Sample])> = [(VIDEO_TRACK, video), (AUDIO_TRACK, audio)]
        .into_iter()
        .filter(|(_, s)| !s.is_empty())
        .collect();
    // moof size first (data offsets point past it into mdat).
    let traf_len = |s: &[Sample], video: bool| {
        let per = if video { 16 } else { 12 };
        8 + 16 + 20 + (20 + per * s.len())
    };
    let moof_len = 8
        + 16
        + tracks
            .iter()
            .map(|(id, s)| traf_len(s, *id == VIDEO_TRACK))
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(moof_len + 8 + total(video) + total(audio));
    out.put_u32(moof_len as u32);
    out.put_slice(b"moof");
    full(b"mfhd", 0, 0, &seq.to_be_bytes(), &mut out);
    let mut offset = moof_len + 8;
    for (id, samples) in &tracks {
        let is_video = *id == VIDEO_TRACK;
        let mut traf = BytesMut::new();
        // tfhd: default-base-is-moof.
        full(b"tfhd", 0, 0x02_0000, &id.to_be_bytes(), &mut traf);
        let base = samples.first().map_or(0, |s| s.dts.max(0) as u64);
        full(b"tfdt", 1, 0, &base.to_be_bytes(), &mut traf);
        let mut trun = BytesMut::new();
        trun.put_u32(samples.len() as u32);
        trun.put_i32(offset as i32);
        for s in samples.iter() {
            trun.put_u32(s.duration);
            trun.put_u32(s.data.len() as u32);
            // sample flags: depends on others (2) unless a sync sample (non-sync bit).
            let flags = if !is_video || s.keyframe {
                0x0200_0000
            } else {
                0x0101_0000
            };
            trun.put_u32(flags);
            if is_video {
                trun.put_i32(s.cts);
            }
        }
        // data offset, duration, size, flags (+ composition offsets).
        let flags = 0x0001 | 0x0100 | 0x0200 | 0x0400 | if is_video { 0x0800 } else { 0 };
        full(b"trun", 1, flags, &trun, &mut traf);
        boxed(b"traf", &traf, &mut out);
        offset += total(samples);
    }
    debug_assert_eq!(out.len(), moof_len);
    out.put_u32((8 + total(video) + total(audio)) as u32);
    out.put_slice(b"mdat");
    for (_, samples) in &tracks {
        for s in samples.iter() {
            out.put_slice(&s.data);
        }
    }
    out.freeze()
}

fn total(s: &[Sample]) -> usize {
    s.iter().map(|s| s.data.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (type, size) of the top-level boxes.
    fn boxes(b: &[u8]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut p = 0;
        while p + 8 <= b.len() {
            let size = u32::from_be_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]) as usize;
            out.push((String::from_utf8_lossy(&b[p + 4..p + 8]).into_owned(), size));
            if size < 8 {
                break;
            }
            p += size;
        }
        assert_eq!(p, b.len(), "boxes end exactly at the end");
        out
    }

    fn tracks() -> (VideoTrack, AudioTrack) {
        (
            VideoTrack {
                avcc: Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff, 0xe0, 0xe1, 0]),
                width: 320,
                height: 240,
            },
            AudioTrack {
                asc: Bytes::from_static(&[0x12, 0x10]),
            },
        )
    }

    #[test]
    fn init_segment_layout_and_codec_strings() {
        let (v, a) = tracks();
        assert_eq!(v.codec(), "avc1.64001f");
        assert_eq!(a.codec(), "mp4a.40.2");
        assert_eq!(a.params(), (2, 44100, 2));
        let init = init_segment(Some(&v), Some(&a));
        let b = boxes(&init);
        assert_eq!(b[0].0, "ftyp");
        assert_eq!(b[1].0, "moov");
        let text = String::from_utf8_lossy(&init);
        for k in [
            "mvhd", "trak", "avcC", "esds", "mvex", "trex", "mp4a", "avc1",
        ] {
            assert!(text.contains(k), "{k} missing");
        }
    }

    #[test]
    fn fragments_point_into_their_mdat() {
        let s = |dts, len, key| Sample {
            dts,
            duration: 40,
            cts: 0,
            keyframe: key,
            data: Bytes::from(vec![0xAB; len]),
        };
        let f = fragment(
            7,
            &[s(1000, 100, true), s(1040, 50, false)],
            &[s(1000, 20, true)],
        );
        let b = boxes(&f);
        assert_eq!(b[0].0, "moof");
        assert_eq!(b[1], ("mdat".into(), 8 + 170));
        // The video trun's data offset is moof size + 8.
        let moof = b[0].1;
        let at = f.windows(4).position(|w| w == b"trun").unwrap();
        let off = i32::from_be_bytes([f[at + 12], f[at + 13], f[at + 14], f[at + 15]]);
        assert_eq!(off as usize, moof + 8);
        assert_eq!(&f[moof + 8..moof + 8 + 100], &[0xAB; 100][..]);
    }
}
