//! G.711 (ITU-T, 1972): 8 kHz samples companded to 8 bits, mu-law (PCMU, RTP payload type 0) and A-law
//! (PCMA, 8). The classic segment arithmetic, as in the ITU's reference code.

/// The audio band G.711 carries, in kHz (8 kHz sampling: telephone audio up to 4 kHz).
pub const BAND_KHZ: u8 = 4;

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// One 16-bit sample to mu-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut x = i32::from(sample);
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    x = x.min(CLIP) + BIAS;
    // The segment: the position of the highest bit of x above bit 7.
    let top = ((x >> 7) & 0xFF) as u32;
    let exponent = if top == 0 {
        0
    } else {
        31 - top.leading_zeros()
    };
    let mantissa = (x >> (exponent + 3)) & 0x0F;
    !(sign | ((exponent as i32) << 4) | mantissa) as u8
}

/// One mu-law byte to a 16-bit sample.
pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    (if u & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// One 16-bit sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    let mut x = i32::from(sample) >> 3;
    let mask: i32 = if x >= 0 {
        0xD5
    } else {
        x = -x - 1;
        0x55
    };
    const SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let Some(seg) = SEG_END.iter().position(|&e| x <= e) else {
        return (0x7F ^ mask) as u8;
    };
    let mut a = (seg as i32) << 4;
    a |= if seg < 2 {
        (x >> 1) & 0x0F
    } else {
        (x >> seg) & 0x0F
    };
    (a ^ mask) as u8
}

/// One A-law byte to a 16-bit sample.
pub fn alaw_decode(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    let seg = i32::from((a & 0x70) >> 4);
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known code points, and every sample's round trip within the segment's step (the companding error).
    #[test]
    fn both_laws_round_trip_within_their_step() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0xAA), 32256);
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let step = |v: i16| (i32::from(v).abs() / 16).max(16);
            let u = ulaw_decode(ulaw_encode(s));
            assert!(
                (i32::from(u) - i32::from(s)).abs() <= step(s) + 8,
                "mu-law {s} -> {u}"
            );
            let a = alaw_decode(alaw_encode(s));
            assert!(
                (i32::from(a) - i32::from(s)).abs() <= step(s) + 8,
                "A-law {s} -> {a}"
            );
        }
        // Every code decodes to a value that encodes back to the same code.
        for b in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_decode(b)), b, "A-law {b:#x}");
            // mu-law has two zeros (0x7F and 0xFF); -0 encodes as +0.
            if b != 0x7F {
                assert_eq!(ulaw_encode(ulaw_decode(b)), b, "mu-law {b:#x}");
            }
        }
    }
}
