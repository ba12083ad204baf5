//! A synthetic FLV source for tests and demos that need no ffmpeg.
//!
//! [`Synth`] produces a valid FLV stream: `onMetaData`, an AVC sequence
//! header with a real SPS/PPS (constrained baseline, any even size), an AAC
//! sequence header, then H.264 frames and AAC frames in timestamp order.
//!
//! The H.264 is not only well-formed but decodable: each key frame is an IDR
//! slice of `I_16x16` DC-predicted macroblocks without residual (a flat grey
//! picture, one byte per macroblock) and every other frame is a P slice of
//! skipped macroblocks. Each frame also carries an SEI
//! `user_data_unregistered` message with its sequence number (read it back
//! with [`frame_seq`], handy to check continuity through a relay) and filler
//! data NAL units that bring the frame to the size the configured bitrate
//! asks for (key frames get four times the share of other frames). Audio is
//! silent AAC-LC, 44.1 kHz stereo, 1024 samples per frame (~43 frames/s).
//!
//! Pacing is the caller's: [`Synth::next_tags`] returns the tags up to a
//! media time, so `next_tags(elapsed_ms)` in a timer loop plays in real time.

use bytes::{BufMut, Bytes, BytesMut};

use crate::flv::amf::{self, Value};
use crate::flv::{FileHeader, Tag, TagKind};

/// What to generate. Values out of range are clamped by [`Synth::new`]:
/// fps 1..=240, gop_frames ≥ 1, width/height even in 16..=4096,
/// bitrate_kbps ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthConfig {
    /// Target video bitrate (bytes of video tag bodies), kbit/s. Frames are
    /// never smaller than their natural size (a large picture at a tiny
    /// bitrate overshoots). Audio adds about 3 kbit/s.
    pub bitrate_kbps: u32,
    pub fps: u32,
    /// Frames per GOP: a key frame every `gop_frames` frames.
    pub gop_frames: u32,
    pub audio: bool,
    pub width: u32,
    pub height: u32,
}

impl Default for SynthConfig {
    /// 320x240, 25 fps, 1000 kbit/s, a key frame every 2 s, with audio.
    fn default() -> Self {
        SynthConfig {
            bitrate_kbps: 1000,
            fps: 25,
            gop_frames: 50,
            audio: true,
            width: 320,
            height: 240,
        }
    }
}

/// At most this many tags are returned by one [`Synth::next_tags`] call;
/// call again for the rest.
pub const MAX_TAGS_PER_CALL: usize = 4096;

/// AAC: samples per frame and sample rate.
const AAC_FRAME_SAMPLES: u64 = 1024;
const AAC_SAMPLE_RATE: u64 = 44_100;
/// UUID of the SEI message carrying the frame sequence number.
pub const SEI_UUID: [u8; 16] = *b"vantage-synth-v1";

/// The generator. Cheap to create; state is two frame counters.
#[derive(Debug, Clone)]
pub struct Synth {
    cfg: SynthConfig,
    sps: Vec<u8>,
    pps: Vec<u8>,
    mbs: u32,
    aac: Bytes,
    video_frame: u64,
    audio_frame: u64,
}

impl Synth {
    pub fn new(cfg: SynthConfig) -> Synth {
        let even = |v: u32| (v.clamp(16, 4096) + 1) & !1;
        let cfg = SynthConfig {
            bitrate_kbps: cfg.bitrate_kbps.max(1),
            fps: cfg.fps.clamp(1, 240),
            gop_frames: cfg.gop_frames.max(1),
            audio: cfg.audio,
            width: even(cfg.width),
            height: even(cfg.height),
        };
        let mbs = cfg.width.div_ceil(16) * cfg.height.div_ceil(16);
        Synth {
            sps: sps(&cfg),
            pps: pps(),
            mbs,
            aac: silent_aac_frame(),
            cfg,
            video_frame: 0,
            audio_frame: 0,
        }
    }

    /// The configuration in use (after clamping).
    pub fn config(&self) -> SynthConfig {
        self.cfg
    }

    pub fn file_header(&self) -> FileHeader {
        FileHeader {
            has_audio: self.cfg.audio,
            has_video: true,
        }
    }

    /// `onMetaData`, the AVC sequence header and (with audio) the AAC
    /// sequence header, all at timestamp 0.
    pub fn header_tags(&self) -> Vec<Tag> {
        let c = &self.cfg;
        let mut props = vec![
            ("duration".to_string(), Value::Number(0.0)),
            ("width".to_string(), Value::Number(f64::from(c.width))),
            ("height".to_string(), Value::Number(f64::from(c.height))),
            (
                "videodatarate".to_string(),
                Value::Number(f64::from(c.bitrate_kbps)),
            ),
            ("framerate".to_string(), Value::Number(f64::from(c.fps))),
            ("videocodecid".to_string(), Value::Number(7.0)),
        ];
        if c.audio {
            props.extend([
                ("audiodatarate".to_string(), Value::Number(3.0)),
                ("audiosamplerate".to_string(), Value::Number(44_100.0)),
                ("audiosamplesize".to_string(), Value::Number(16.0)),
                ("stereo".to_string(), Value::Boolean(true)),
                ("audiocodecid".to_string(), Value::Number(10.0)),
            ]);
        }
        props.extend([
            (
                "encoder".to_string(),
                Value::String("vantage-synth".to_string()),
            ),
            ("filesize".to_string(), Value::Number(0.0)),
        ]);
        let mut tags = vec![
            Tag::new(TagKind::Script, 0, amf::metadata_body(&props)),
            Tag::new(TagKind::Video, 0, self.avc_sequence_header()),
        ];
        if c.audio {
            // AudioSpecificConfig: AAC-LC (2), 44.1 kHz (index 4), stereo.
            tags.push(Tag::new(
                TagKind::Audio,
                0,
                Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10]),
            ));
        }
        tags
    }

    /// Media tags with timestamps up to and including `until_ms`, in
    /// timestamp order (video first on a tie), at most
    /// [`MAX_TAGS_PER_CALL`].
    ///
    /// Timestamps are FLV's 32-bit milliseconds and wrap after ~49.7 days;
    /// `until_ms` is read modulo 2^32 relative to [`Synth::next_ts`], so a
    /// caller passing `elapsed_ms as u32` keeps going across the wrap (a
    /// value up to ~24.8 days behind the next tag yields nothing).
    pub fn next_tags(&mut self, until_ms: u32) -> Vec<Tag> {
        let next = self.next_ts64();
        let ahead = until_ms.wrapping_sub(next as u32);
        if ahead > i32::MAX as u32 {
            return Vec::new();
        }
        let until = next + u64::from(ahead);
        let mut out = Vec::new();
        while out.len() < MAX_TAGS_PER_CALL {
            let v = self.video_ts(self.video_frame);
            let a = self.audio_ts(self.audio_frame);
            if self.cfg.audio && a < v {
                if a > until {
                    break;
                }
                out.push(Tag::new(TagKind::Audio, a as u32, self.aac.clone()));
                self.audio_frame += 1;
            } else {
                if v > until {
                    break;
                }
                out.push(self.video_tag(v as u32));
                self.video_frame += 1;
            }
        }
        out
    }

    /// Media time of the next tag [`Synth::next_tags`] would return.
    pub fn next_ts(&self) -> u32 {
        self.next_ts64() as u32
    }

    fn next_ts64(&self) -> u64 {
        let v = self.video_ts(self.video_frame);
        if self.cfg.audio {
            v.min(self.audio_ts(self.audio_frame))
        } else {
            v
        }
    }

    /// Video frames generated so far.
    pub fn frames(&self) -> u64 {
        self.video_frame
    }

    /// The whole stream up to `until_ms` as FLV bytes: file header, header
    /// tags, media tags.
    pub fn stream_bytes(&mut self, until_ms: u32) -> Bytes {
        let mut out = BytesMut::new();
        out.put_slice(&self.file_header().encode());
        for t in self.header_tags() {
            t.encode_into(&mut out);
        }
        loop {
            let tags = self.next_tags(until_ms);
            if tags.is_empty() {
                break;
            }
            for t in &tags {
                t.encode_into(&mut out);
            }
        }
        out.freeze()
    }

    fn video_ts(&self, frame: u64) -> u64 {
        frame * 1000 / u64::from(self.cfg.fps)
    }

    fn audio_ts(&self, frame: u64) -> u64 {
        frame * AAC_FRAME_SAMPLES * 1000 / AAC_SAMPLE_RATE
    }

    fn avc_sequence_header(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_slice(&[0x17, 0x00, 0, 0, 0]);
        // AVCDecoderConfigurationRecord, 4-byte NAL lengths, 1 SPS, 1 PPS.
        b.put_u8(1);
        b.put_slice(&self.sps[1..4]);
        b.put_u8(0xFF);
        b.put_u8(0xE1);
        b.put_u16(self.sps.len() as u16);
        b.put_slice(&self.sps);
        b.put_u8(1);
        b.put_u16(self.pps.len() as u16);
        b.put_slice(&self.pps);
        b.freeze()
    }

    fn video_tag(&self, ts: u32) -> Tag {
        let gop = u64::from(self.cfg.gop_frames);
        let pos = self.video_frame % gop;
        let key = pos == 0;
        let slice = if key {
            idr_slice(self.mbs, self.video_frame / gop)
        } else {
            // frame_num counts reference frames since the IDR, mod 16.
            p_slice(self.mbs, (pos % 16) as u32)
        };
        let sei = sei_frame_seq(self.video_frame);
        let mut b = BytesMut::with_capacity(self.frame_target(key).max(64));
        b.put_u8(if key { 0x17 } else { 0x27 });
        b.put_slice(&[0x01, 0, 0, 0]);
        for nal in [&sei, &slice] {
            b.put_u32(nal.len() as u32);
            b.put_slice(nal);
        }
        // Filler NAL: length, header 0x0C, 0xFF…, trailing 0x80 (6 bytes min).
        let target = self.frame_target(key);
        if target >= b.len() + 6 {
            let ff = target - b.len() - 6;
            b.put_u32((ff + 2) as u32);
            b.put_u8(0x0C);
            b.put_bytes(0xFF, ff);
            b.put_u8(0x80);
        }
        Tag::new(TagKind::Video, ts, b.freeze())
    }

    /// Body bytes a frame should have for the configured bitrate.
    fn frame_target(&self, key: bool) -> usize {
        let gop = u64::from(self.cfg.gop_frames);
        let avg = u64::from(self.cfg.bitrate_kbps) * 125 / u64::from(self.cfg.fps);
        let key_share = avg * gop.min(4);
        let t = if key {
            key_share
        } else {
            (avg * gop).saturating_sub(key_share) / (gop - 1).max(1)
        };
        usize::try_from(t).unwrap_or(usize::MAX)
    }
}

/// The sequence number a synthetic video tag carries in its SEI, `None` for
/// tags not made by [`Synth`].
pub fn frame_seq(tag: &Tag) -> Option<u64> {
    if tag.kind != TagKind::Video || tag.body.get(1) != Some(&1) {
        return None;
    }
    let mut b = tag.body.get(5..)?;
    while b.len() >= 4 {
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let nal = b.get(4..4 + len)?;
        b = &b[4 + len..];
        if nal.first().map(|h| h & 0x1F) != Some(6) {
            continue;
        }
        let rbsp = unescape(&nal[1..]);
        // payloadType 5, payloadSize 24, UUID, u64.
        if rbsp.len() >= 26 && rbsp[0] == 5 && rbsp[1] == 24 && rbsp[2..18] == SEI_UUID {
            let mut n = [0u8; 8];
            n.copy_from_slice(&rbsp[18..26]);
            return Some(u64::from_be_bytes(n));
        }
    }
    None
}

/// A silent AAC-LC stereo raw frame: CPE with common window, max_sfb 0, no
/// spectral data, then END.
fn silent_aac_frame() -> Bytes {
    let mut w = BitWriter::default();
    w.bits(1, 3); // ID_CPE
    w.bits(0, 4); // element_instance_tag
    w.bits(1, 1); // common_window
    w.bits(0, 1); // ics_reserved_bit
    w.bits(0, 2); // ONLY_LONG_SEQUENCE
    w.bits(0, 1); // window_shape
    w.bits(0, 6); // max_sfb
    w.bits(0, 1); // predictor_data_present
    w.bits(0, 2); // ms_mask_present
    for _ in 0..2 {
        w.bits(100, 8); // global_gain
        w.bits(0, 3); // pulse, tns, gain control: absent
    }
    w.bits(7, 3); // ID_END
    let raw = w.finish_aligned();
    let mut b = BytesMut::with_capacity(2 + raw.len());
    b.put_slice(&[0xAF, 0x01]);
    b.put_slice(&raw);
    b.freeze()
}

/// SPS: constrained baseline, POC type 2, one reference frame, cropping for
/// sizes not a multiple of 16, VUI timing for the frame rate.
fn sps(cfg: &SynthConfig) -> Vec<u8> {
    let wmbs = cfg.width.div_ceil(16);
    let hmbs = cfg.height.div_ceil(16);
    let level = match wmbs * hmbs {
        0..=1620 => 30,
        1621..=3600 => 31,
        3601..=8192 => 40,
        8193..=22080 => 50,
        _ => 51,
    };
    let mut w = BitWriter::default();
    w.bits(66, 8); // profile_idc: baseline
    w.bits(0xC0, 8); // constraint_set0/1: constrained baseline
    w.bits(level, 8);
    w.ue(0); // seq_parameter_set_id
    w.ue(0); // log2_max_frame_num_minus4
    w.ue(2); // pic_order_cnt_type
    w.ue(1); // max_num_ref_frames
    w.bits(0, 1); // gaps_in_frame_num_value_allowed_flag
    w.ue(wmbs - 1);
    w.ue(hmbs - 1);
    w.bits(1, 1); // frame_mbs_only_flag
    w.bits(1, 1); // direct_8x8_inference_flag
    let crop_r = (wmbs * 16 - cfg.width) / 2;
    let crop_b = (hmbs * 16 - cfg.height) / 2;
    if crop_r > 0 || crop_b > 0 {
        w.bits(1, 1);
        w.ue(0);
        w.ue(crop_r);
        w.ue(0);
        w.ue(crop_b);
    } else {
        w.bits(0, 1);
    }
    w.bits(1, 1); // vui_parameters_present_flag
    w.bits(0, 4); // aspect ratio, overscan, video signal, chroma loc: absent
    w.bits(1, 1); // timing_info_present_flag
    w.bits(1, 32); // num_units_in_tick
    w.bits(2 * cfg.fps, 32); // time_scale
    w.bits(1, 1); // fixed_frame_rate_flag
    w.bits(0, 5); // nal/vcl hrd, pic_struct, bitstream_restriction: absent
    nal(0x67, w.finish_rbsp())
}

/// PPS: CAVLC, one slice group, deblocking control present.
fn pps() -> Vec<u8> {
    let mut w = BitWriter::default();
    w.ue(0); // pic_parameter_set_id
    w.ue(0); // seq_parameter_set_id
    w.bits(0, 1); // entropy_coding_mode_flag: CAVLC
    w.bits(0, 1); // bottom_field_pic_order_in_frame_present_flag
    w.ue(0); // num_slice_groups_minus1
    w.ue(0); // num_ref_idx_l0_default_active_minus1
    w.ue(0); // num_ref_idx_l1_default_active_minus1
    w.bits(0, 1); // weighted_pred_flag
    w.bits(0, 2); // weighted_bipred_idc
    w.se(0); // pic_init_qp_minus26
    w.se(0); // pic_init_qs_minus26
    w.se(0); // chroma_qp_index_offset
    w.bits(1, 1); // deblocking_filter_control_present_flag
    w.bits(0, 1); // constrained_intra_pred_flag
    w.bits(0, 1); // redundant_pic_cnt_present_flag
    nal(0x68, w.finish_rbsp())
}

/// IDR slice of I_16x16 DC-predicted macroblocks without residual.
fn idr_slice(mbs: u32, idr_id: u64) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.ue(0); // first_mb_in_slice
    w.ue(7); // slice_type: I (all slices)
    w.ue(0); // pic_parameter_set_id
    w.bits(0, 4); // frame_num
    w.ue((idr_id % 65_536) as u32); // idr_pic_id
    w.bits(0, 1); // no_output_of_prior_pics_flag
    w.bits(0, 1); // long_term_reference_flag
    w.se(0); // slice_qp_delta
    w.ue(1); // disable_deblocking_filter_idc: off
    for _ in 0..mbs {
        w.ue(3); // mb_type I_16x16_2_0_0: DC prediction, no coded blocks
        w.ue(0); // intra_chroma_pred_mode: DC
        w.se(0); // mb_qp_delta
        w.bits(1, 1); // Intra16x16DCLevel coeff_token: no coefficients (nC 0)
    }
    nal(0x65, w.finish_rbsp())
}

/// P slice whose macroblocks are all skipped.
fn p_slice(mbs: u32, frame_num: u32) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.ue(0); // first_mb_in_slice
    w.ue(5); // slice_type: P (all slices)
    w.ue(0); // pic_parameter_set_id
    w.bits(frame_num, 4); // frame_num
    w.bits(0, 1); // num_ref_idx_active_override_flag
    w.bits(0, 1); // ref_pic_list_modification_flag_l0
    w.bits(0, 1); // adaptive_ref_pic_marking_mode_flag
    w.se(0); // slice_qp_delta
    w.ue(1); // disable_deblocking_filter_idc: off
    w.ue(mbs); // mb_skip_run: every macroblock
    nal(0x41, w.finish_rbsp())
}

/// SEI user_data_unregistered with the frame sequence number.
fn sei_frame_seq(seq: u64) -> Vec<u8> {
    let mut rbsp = vec![5u8, 24];
    rbsp.extend_from_slice(&SEI_UUID);
    rbsp.extend_from_slice(&seq.to_be_bytes());
    rbsp.push(0x80); // rbsp_trailing_bits
    nal(0x06, rbsp)
}

/// A NAL unit: header byte then the RBSP with emulation prevention.
fn nal(header: u8, rbsp: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 2);
    out.push(header);
    let mut zeros = 0;
    for b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Removes emulation prevention bytes (00 00 03 → 00 00).
fn unescape(ebsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ebsp.len());
    let mut zeros = 0;
    for &b in ebsp {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// MSB-first bit writer with Exp-Golomb codes.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    cur: u8,
    n: u8,
}

impl BitWriter {
    /// Writes the low `count` bits of `v`, most significant first.
    fn bits(&mut self, v: u32, count: u8) {
        for i in (0..count).rev() {
            self.cur = (self.cur << 1) | ((v >> i) & 1) as u8;
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.cur);
                self.cur = 0;
                self.n = 0;
            }
        }
    }

    fn ue(&mut self, v: u32) {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros() as u8;
        for _ in 1..len {
            self.bits(0, 1);
        }
        for i in (0..len).rev() {
            self.bits(((x >> i) & 1) as u32, 1);
        }
    }

    fn se(&mut self, v: i32) {
        let k = if v > 0 {
            v.unsigned_abs() * 2 - 1
        } else {
            v.unsigned_abs().saturating_mul(2)
        };
        self.ue(k);
    }

    /// Pads with zero bits to a byte boundary.
    fn finish_aligned(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.cur << (8 - self.n));
        }
        self.out
    }

    /// rbsp_trailing_bits: a one bit, then zeros to the byte boundary.
    fn finish_rbsp(mut self) -> Vec<u8> {
        self.bits(1, 1);
        self.finish_aligned()
    }
}

#[cfg(test)]
mod tests;
