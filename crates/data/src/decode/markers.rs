//! A JPEG's marker structure, read without decoding: the frame's type and
//! components with their sampling factors, the components of each scan,
//! and whether an Adobe APP14 segment is present (Adobe CMYK JPEGs store
//! their inks inverted).
//!
//! The decoders use it to decide what they can decode correctly: zune-jpeg
//! (the fallback of builds without libjpeg-turbo) decodes some valid files
//! wrongly instead of failing, so those are refused before it sees them.

/// One component of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// Component id (C_i).
    pub id: u8,
    /// Horizontal sampling factor (1..=4).
    pub h: u8,
    /// Vertical sampling factor (1..=4).
    pub v: u8,
}

/// What [`scan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JpegLayout {
    /// The SOF marker's second byte (0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...); 0 if none was found.
    pub sof: u8,
    /// The frame's components, in order.
    pub components: Vec<Component>,
    /// For each scan (SOS), how many components it carries.
    pub scan_components: Vec<u8>,
    /// An APP14 "Adobe" segment was present.
    pub adobe: bool,
    /// The frame's width and height (0 if no frame header was found).
    pub width: u16,
    /// See `width`.
    pub height: u16,
    /// The restart interval in MCUs of the last DRI segment (0: none).
    pub restart_interval: u16,
}

impl JpegLayout {
    /// Whether the frame is progressive (SOF2, SOF6, SOF10, SOF14).
    pub fn progressive(&self) -> bool {
        matches!(self.sof, 0xC2 | 0xC6 | 0xCA | 0xCE)
    }

    /// Whether a sequential frame of several components has a scan that
    /// carries only some of them (a non-interleaved or partially
    /// interleaved file).
    pub fn non_interleaved(&self) -> bool {
        !self.progressive()
            && self.components.len() > 1
            && self
                .scan_components
                .iter()
                .any(|&n| (n as usize) < self.components.len())
    }

    /// The MCU's width and height in pixels (8 times the largest sampling
    /// factors; 8x8 for a single-component frame, whose scans are
    /// non-interleaved).
    pub fn mcu_size(&self) -> (u32, u32) {
        if self.components.len() <= 1 {
            return (8, 8);
        }
        let h = self.components.iter().map(|c| c.h).max().unwrap_or(1);
        let v = self.components.iter().map(|c| c.v).max().unwrap_or(1);
        (8 * h.max(1) as u32, 8 * v.max(1) as u32)
    }

    /// Whether the first component (luma) has the largest sampling factors,
    /// as in every common subsampling (4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1).
    pub fn luma_samples_most(&self) -> bool {
        let Some(first) = self.components.first() else {
            return true;
        };
        self.components
            .iter()
            .all(|c| c.h <= first.h && c.v <= first.v)
    }
}

/// Reads the marker segments of `bytes` (a JPEG), skipping entropy-coded
/// data, until the end-of-image marker or the end of the data. Returns
/// what was found; a malformed structure ends the scan early (decoders
/// report it themselves).
pub fn scan(bytes: &[u8]) -> JpegLayout {
    let mut out = JpegLayout::default();
    let mut i = 2; // after SOI
    let len = bytes.len();
    while i + 4 <= len {
        if bytes[i] != 0xFF {
            // Entropy-coded data (after an SOS): find the next marker that is
            // neither a stuffed 0xFF00, a fill byte nor a restart marker.
            i += 1;
            continue;
        }
        let m = bytes[i + 1];
        if m == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if m == 0x00 || (0xD0..=0xD7).contains(&m) || m == 0x01 {
            i += 2;
            continue;
        }
        if m == 0xD9 {
            break; // EOI
        }
        let seg_len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        if seg_len < 2 || i + 2 + seg_len > len {
            break;
        }
        let seg = &bytes[i + 4..i + 2 + seg_len];
        match m {
            0xC0..=0xCF
                if m != 0xC4 && m != 0xC8 && m != 0xCC && out.sof == 0 && seg.len() >= 6 =>
            {
                out.sof = m;
                out.height = u16::from_be_bytes([seg[1], seg[2]]);
                out.width = u16::from_be_bytes([seg[3], seg[4]]);
                let n = seg[5] as usize;
                out.components = seg[6..]
                    .chunks_exact(3)
                    .take(n)
                    .map(|c| Component {
                        id: c[0],
                        h: c[1] >> 4,
                        v: c[1] & 0x0F,
                    })
                    .collect();
            }
            0xDA => {
                if let Some(&n) = seg.first() {
                    out.scan_components.push(n);
                }
            }
            0xEE if seg.starts_with(b"Adobe") => out.adobe = true,
            0xDD if seg.len() >= 2 => out.restart_interval = u16::from_be_bytes([seg[0], seg[1]]),
            _ => {}
        }
        i += 2 + seg_len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, marker];
        v.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn jpeg(sampling: &[u8], scans: &[u8], adobe: bool) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        if adobe {
            b.extend(segment(0xEE, b"Adobe\0\x64\0\0\0\0\x02"));
        }
        let mut sof = vec![8, 0, 16, 0, 16, sampling.len() as u8];
        for (k, &s) in sampling.iter().enumerate() {
            sof.extend_from_slice(&[k as u8 + 1, s, 0]);
        }
        b.extend(segment(0xC0, &sof));
        for &n in scans {
            let mut sos = vec![n];
            for k in 0..n {
                sos.extend_from_slice(&[k + 1, 0]);
            }
            sos.extend_from_slice(&[0, 63, 0]);
            b.extend(segment(0xDA, &sos));
            // entropy data with a stuffed byte and a restart marker
            b.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        }
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    #[test]
    fn reads_frame_scans_and_adobe() {
        let l = scan(&jpeg(&[0x22, 0x11, 0x11], &[3], false));
        assert_eq!(l.sof, 0xC0);
        assert_eq!(l.components[0], Component { id: 1, h: 2, v: 2 });
        assert_eq!(l.scan_components, vec![3]);
        assert!(!l.adobe && !l.non_interleaved() && l.luma_samples_most());

        let l = scan(&jpeg(&[0x22, 0x11, 0x11], &[1, 1, 1], true));
        assert!(l.adobe && l.non_interleaved());
        let l = scan(&jpeg(&[0x22, 0x11, 0x11], &[1, 2], false));
        assert!(l.non_interleaved());
        let l = scan(&jpeg(&[0x11, 0x22, 0x22], &[3], false));
        assert!(!l.luma_samples_most());
    }

    #[test]
    fn reads_size_and_restart_interval_of_real_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/odd-jpeg");
        let read = |name: &str| scan(&std::fs::read(dir.join(name)).unwrap());
        let l = read("app13.jpg");
        assert_eq!((l.width, l.height, l.restart_interval), (4, 4, 1));
        assert_eq!(l.mcu_size(), (16, 16));
        let l = read("hopper_bad_exif.jpg");
        assert_eq!((l.width, l.height, l.restart_interval), (500, 500, 63));
        assert_eq!((l.components.len(), l.mcu_size()), (1, (8, 8)));
        let l = read("pil_sample_rgb.jpg");
        assert_eq!((l.width, l.height, l.restart_interval), (100, 100, 13));
        assert_eq!(l.mcu_size(), (8, 8));
    }

    #[test]
    fn never_panics_on_cut_data() {
        let full = jpeg(&[0x22, 0x11, 0x11], &[1, 1, 1], true);
        for n in 0..full.len() {
            let _ = scan(&full[..n]);
        }
    }
}
