//! JPEG decoding through libjpeg-turbo's libjpeg API (as built by
//! `mozjpeg-sys`), decoding only the region asked for: the rows above it are
//! skipped (`jpeg_skip_scanlines`: entropy-decoded, never transformed to
//! pixels), the columns cut (`jpeg_crop_scanline`), and decoding stops after
//! the region's last row.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return;
//! here it unwinds (mozjpeg-sys builds the C code with unwind tables) with a
//! [`LibjpegError`] payload that [`decode`] catches and turns into a
//! [`DecodeError`]. Warnings (a cut-off file, a bad restart marker) are not
//! errors, as in zune-jpeg's lenient mode: the decoder fills what is missing.

use super::{DecodeError, DecodedInfo, Region, SourceColor, SourceFormat};
use mozjpeg_sys as j;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

unsafe extern "C" {
    // libjpeg-turbo's own probe: 1 when its SIMD inverse DCT is built in and
    // the CPU runs it (mozjpeg-sys builds the SIMD code only where nasm is
    // installed; otherwise every `jsimd_can_*` is 0).
    fn jsimd_can_idct_islow() -> std::ffi::c_int;
}

/// Whether libjpeg-turbo runs with its SIMD code. Without it, it decodes
/// 2.5 times slower than zune-jpeg (130 against 319 Mpixel/s on the photo
/// set), but still correctly, so it still decodes every JPEG: the build
/// script warns, and [`super::jpeg_decoder_name`] says so.
pub(super) fn has_simd() -> bool {
    static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: a query without arguments; libjpeg-turbo keeps its CPU probe per thread.
    *SIMD.get_or_init(|| unsafe { jsimd_can_idct_islow() } != 0)
}

/// A fatal libjpeg error (the unwind payload of `error_exit`): its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LibjpegError(pub(crate) String);

/// One libjpeg decompressor, reused for every image of a thread.
struct Decompressor {
    cinfo: Box<j::jpeg_decompress_struct>,
    // Pointed to by `cinfo.common.err`; boxed so that it never moves.
    _err: Box<j::jpeg_error_mgr>,
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut j::jpeg_common_struct) {
    let mut buf = [0u8; 80];
    // SAFETY: `err` is the manager installed in `Decompressor::new`, whose
    // `format_message` (libjpeg's own) writes at most 80 bytes, NUL-terminated.
    // mozjpeg-sys declares the buffer `&[u8; 80]`; the function writes it, so
    // it is called through a pointer type that says so.
    let message = unsafe {
        let err = &*cinfo.err;
        if let Some(format) = err.format_message {
            let format: unsafe extern "C-unwind" fn(&mut j::jpeg_common_struct, *mut u8) =
                std::mem::transmute(format);
            format(cinfo, buf.as_mut_ptr());
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    };
    // `resume_unwind` skips the panic hook: a corrupt file is an error value, not a crash report.
    resume_unwind(Box::new(LibjpegError(message)));
}

unsafe extern "C-unwind" fn emit_message(_cinfo: &mut j::jpeg_common_struct, _level: i32) {}

/// An error manager whose fatal errors unwind with their message (run the
/// libjpeg calls inside [`catch_fatal`]) and whose warnings are ignored.
/// Boxed: libjpeg keeps a pointer to it, so it must not move.
pub(crate) fn error_manager() -> Box<j::jpeg_error_mgr> {
    // SAFETY: plain C data for which all-zero is the state `jpeg_std_error`
    // expects; it fills in libjpeg's defaults, two of which are replaced.
    unsafe {
        let mut err: Box<j::jpeg_error_mgr> = Box::new(std::mem::zeroed());
        j::jpeg_std_error(&mut err);
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err
    }
}

/// Runs `f` (libjpeg calls with an [`error_manager`]), turning a fatal
/// libjpeg error into its message; any other panic goes on unwinding.
pub(crate) fn catch_fatal<T>(f: impl FnOnce() -> T) -> Result<T, LibjpegError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| match payload.downcast::<LibjpegError>() {
        Ok(e) => *e,
        Err(other) => resume_unwind(other),
    })
}

impl Decompressor {
    fn new() -> Decompressor {
        let mut err = error_manager();
        // SAFETY: plain C data for which all-zero is the state libjpeg
        // expects before `jpeg_create_decompress`; the error manager is
        // boxed (it must not move) and set before creation.
        unsafe {
            let mut cinfo: Box<j::jpeg_decompress_struct> = Box::new(std::mem::zeroed());
            cinfo.common.err = &mut *err;
            j::jpeg_create_decompress(&mut *cinfo);
            Decompressor { cinfo, _err: err }
        }
    }

    /// Decodes the region `region_for` asks for. CMYK and YCCK are decoded
    /// to CMYK and converted to RGB as Pillow's `convert("RGB")` does (inks
    /// inverted first where an Adobe segment says they are stored so).
    /// Fatal errors unwind (see the module doc).
    ///
    /// # Safety
    /// Call inside [`catch_fatal`], then `jpeg_abort_decompress` whatever happens.
    unsafe fn run(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        min_short: Option<&MinShort<'_>>,
        region_for: &mut dyn FnMut(u32, u32) -> Region,
    ) -> Result<(DecodedInfo, Region), DecodeError> {
        let c = &mut *self.cinfo;
        // SAFETY: `bytes` outlives the decode (the source is dropped by
        // `jpeg_abort_decompress` before `decode` returns); the row pointers
        // passed to `jpeg_read_scanlines` point into `out`, sized to hold
        // `region.height` rows of `output_width` pixels.
        unsafe {
            j::jpeg_mem_src(c, bytes.as_ptr(), bytes.len() as _);
            j::jpeg_read_header(c, 1);
            let color = match c.jpeg_color_space {
                j::J_COLOR_SPACE::JCS_GRAYSCALE => SourceColor::Gray,
                j::J_COLOR_SPACE::JCS_RGB | j::J_COLOR_SPACE::JCS_YCbCr => SourceColor::Rgb,
                j::J_COLOR_SPACE::JCS_CMYK | j::J_COLOR_SPACE::JCS_YCCK => SourceColor::Cmyk,
                _ => {
                    return Err(DecodeError::Corrupt {
                        format: "JPEG",
                        detail: format!(
                            "unknown colour space with {} components",
                            c.num_components
                        ),
                    });
                }
            };
            let (width, height) = (c.image_width, c.image_height);
            if width == 0 || height == 0 {
                return Err(DecodeError::Dimensions { width, height });
            }
            let cmyk = color == SourceColor::Cmyk;
            c.out_color_space = if cmyk {
                j::J_COLOR_SPACE::JCS_CMYK
            } else {
                j::J_COLOR_SPACE::JCS_RGB
            };
            if let Some(min) = min_short {
                c.scale_num = dct_scale(width.min(height), min(width, height, color));
                c.scale_denom = 8;
            }
            j::jpeg_calc_output_dimensions(c);
            let (ow, oh) = (c.output_width, c.output_height);
            let want = region_for(ow, oh).clamped(ow, oh);
            j::jpeg_start_decompress(c);
            let (mut x, mut w) = (want.x, want.width);
            if w < ow {
                j::jpeg_crop_scanline(c, &mut x, &mut w);
            }
            if want.y > 0 {
                j::jpeg_skip_scanlines(c, want.y);
            }
            let stride = c.output_width as usize * if cmyk { 4 } else { 3 };
            out.resize(stride * want.height as usize, 0);
            let mut rows = [std::ptr::null_mut::<u8>(); 16];
            let mut done = 0usize;
            while done < want.height as usize {
                let n = (want.height as usize - done).min(rows.len());
                for (i, r) in rows[..n].iter_mut().enumerate() {
                    *r = out.as_mut_ptr().add((done + i) * stride);
                }
                let got = j::jpeg_read_scanlines(c, rows.as_mut_ptr(), n as _) as usize;
                if got == 0 {
                    break; // cannot happen with a memory source; never loop forever
                }
                done += got;
            }
            if cmyk {
                let pixels = c.output_width as usize * want.height as usize;
                cmyk_to_rgb_in_place(out, pixels, super::markers::scan(bytes).adobe);
            }
            let info = DecodedInfo {
                width,
                height,
                format: SourceFormat::Jpeg,
                color,
            };
            let region = Region {
                x,
                y: want.y,
                width: c.output_width,
                height: want.height,
            };
            Ok((info, region))
        }
    }
}

/// Converts `pixels` CMYK pixels at the start of `buf` to RGB in place
/// (front to back: pixel i's RGB lands at or before its CMYK) and truncates
/// `buf`. Pillow's formula: R = (255 - K) * (255 - C) / 255, rounded.
/// `inverted`: the file stores 255 - ink (Adobe's convention).
fn cmyk_to_rgb_in_place(buf: &mut Vec<u8>, pixels: usize, inverted: bool) {
    let mul = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    for i in 0..pixels {
        let p = &buf[i * 4..i * 4 + 4];
        let ink = |v: u8| if inverted { 255 - v as u32 } else { v as u32 };
        let (cc, m, y, k) = (ink(p[0]), ink(p[1]), ink(p[2]), ink(p[3]));
        let nk = 255 - k;
        let rgb = [nk - mul(cc, nk), nk - mul(m, nk), nk - mul(y, nk)];
        for (d, v) in rgb.into_iter().enumerate() {
            buf[i * 3 + d] = v as u8;
        }
    }
    buf.truncate(pixels * 3);
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: created by `jpeg_create_decompress`, destroyed once.
        unsafe { j::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// The numerator `n` of the smallest DCT scale `n/8` (1, 2, 4 or 8: the
/// scales libjpeg-turbo's SIMD code reduces in the inverse DCT itself) at
/// which a shorter side of `short` pixels still decodes to at least `min`
/// (libjpeg rounds the scaled size up).
pub(super) fn dct_scale(short: u32, min: u32) -> u32 {
    [1u32, 2, 4]
        .into_iter()
        .find(|&n| (u64::from(short) * u64::from(n)).div_ceil(8) >= u64::from(min))
        .unwrap_or(8)
}

/// The shorter side a decode needs, given the image's width, height and
/// colour (read from its header).
pub(super) type MinShort<'a> = dyn Fn(u32, u32, SourceColor) -> u32 + 'a;

/// Decodes a JPEG (see [`super::decode_rgb_region`]); with `min_short`, at
/// the smallest DCT scale (see [`dct_scale`]) that keeps the shorter side at
/// least what it asks, `region_for` then getting the scaled size.
pub(super) fn decode(
    bytes: &[u8],
    out: &mut Vec<u8>,
    min_short: Option<&MinShort<'_>>,
    region_for: &mut dyn FnMut(u32, u32) -> Region,
) -> Result<(DecodedInfo, Region), DecodeError> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = slot.get_or_insert_with(Decompressor::new);
        // SAFETY: inside `catch_fatal`, and aborted below whatever happened.
        let result = catch_fatal(|| unsafe { d.run(bytes, out, min_short, region_for) });
        // SAFETY: resets the decompressor for the next image (also after an error).
        unsafe { j::jpeg_abort_decompress(&mut d.cinfo) };
        result.unwrap_or_else(|detail| {
            Err(DecodeError::Corrupt {
                format: "JPEG",
                detail: detail.0,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::super::{DecodeError, DecodedInfo, Region};
    use crate::augment::{CropResizer, TrainAugment, sample_rng};
    use std::path::PathBuf;

    /// libjpeg-turbo itself.
    fn lj(
        bytes: &[u8],
        out: &mut Vec<u8>,
        mut want: impl FnMut(u32, u32) -> Region,
    ) -> Result<(DecodedInfo, Region), DecodeError> {
        super::decode(bytes, out, None, &mut want)
    }

    /// Every JPEG of the bundled sample (real photos, with the oddities).
    fn sample_jpegs() -> Vec<(PathBuf, Vec<u8>)> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/sample");
        let mut v = Vec::new();
        for dir in ["train", "val"] {
            let mut stack = vec![root.join(dir)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "JPEG") {
                        let bytes = std::fs::read(&p).unwrap();
                        if super::super::is_jpeg(&bytes) && super::super::jpeg_has_eoi(&bytes) {
                            v.push((p, bytes));
                        }
                    }
                }
            }
        }
        v.sort();
        v
    }

    /// A region's pixels are a full decode's, except the region's cut left
    /// and right columns (chroma upsampling there lacks its neighbour): on
    /// the bundled photos, progressive, restart-marker, grayscale and huge
    /// ones included.
    #[test]
    fn region_pixels_are_those_of_a_full_decode() {
        let (mut full, mut part) = (Vec::new(), Vec::new());
        let photos = sample_jpegs();
        assert!(photos.len() > 50);
        for (path, bytes) in photos {
            let (info, _) = lj(&bytes, &mut full, Region::full).unwrap();
            let (w, h) = (info.width, info.height);
            for want in [
                Region {
                    x: w / 3,
                    y: h / 4,
                    width: w / 2,
                    height: h / 2,
                },
                Region {
                    x: 7,
                    y: 5,
                    width: w / 3 + 1,
                    height: h - 5,
                },
                Region {
                    x: w / 2 + 3,
                    y: 0,
                    width: w,
                    height: 9,
                },
                Region::full(w, h),
            ] {
                let want = want.clamped(w, h);
                let (_, got) = lj(&bytes, &mut part, |_, _| want).unwrap();
                assert!(got.x <= want.x && got.x + got.width >= want.x + want.width);
                assert_eq!((got.y, got.height), (want.y, want.height));
                assert_eq!(part.len(), (got.width * got.height * 3) as usize);
                let cut_edges = [(got.x > 0, 0), (got.x + got.width < w, got.width - 1)];
                for y in 0..got.height {
                    for x in 0..got.width {
                        if cut_edges.iter().any(|&(cut, at)| cut && x == at) {
                            continue;
                        }
                        let a = ((got.y + y) * w + got.x + x) as usize * 3;
                        let b = (y * got.width + x) as usize * 3;
                        assert_eq!(
                            full[a..a + 3],
                            part[b..b + 3],
                            "{path:?} {got:?} at {x},{y}"
                        );
                    }
                }
            }
        }
    }

    /// The loader's path (decode only `source_region`, resize the box within
    /// it) gives exactly the output of a full decode, over many draws.
    #[test]
    fn training_crops_from_a_region_equal_those_from_the_full_image() {
        let aug = TrainAugment::default();
        let mut resizer = CropResizer::new(224);
        let (mut full, mut part) = (Vec::new(), Vec::new());
        let mut rows_decoded = 0.0;
        let mut n = 0.0;
        for (k, (path, bytes)) in sample_jpegs().into_iter().enumerate() {
            let (info, _) = lj(&bytes, &mut full, Region::full).unwrap();
            for i in 0..8 {
                let (_, b) = aug.draw(info.width, info.height, &mut sample_rng(3, k as u64, i));
                let reference = resizer
                    .crop_resize(&full, info.width, info.height, &b)
                    .unwrap()
                    .to_vec();
                let (_, region) =
                    lj(&bytes, &mut part, |w, h| resizer.source_region(&[b], w, h)).unwrap();
                let got = resizer
                    .crop_resize(&part, region.width, region.height, &b.within(&region))
                    .unwrap();
                assert!(got == reference, "{path:?} draw {i}: {b:?} in {region:?}");
                rows_decoded += (region.y + region.height) as f64 / info.height as f64;
                n += 1.0;
            }
        }
        // The point of it: on average a good part of each image is never decoded.
        assert!(rows_decoded / n < 0.95, "{}", rows_decoded / n);
    }

    #[test]
    fn dct_scale_is_the_smallest_that_keeps_the_shorter_side() {
        use super::dct_scale;
        assert_eq!(dct_scale(480, 480), 8);
        assert_eq!(dct_scale(958, 480), 8); // 958 / 2 = 479
        assert_eq!(dct_scale(959, 480), 4); // rounds up to 480
        assert_eq!(dct_scale(960, 480), 4);
        assert_eq!(dct_scale(1916, 480), 4); // 1916 / 4 = 479
        assert_eq!(dct_scale(1917, 480), 2); // 1917 / 4 rounds up to 480
        assert_eq!(dct_scale(1920, 480), 2);
        assert_eq!(dct_scale(3840, 480), 1);
        assert_eq!(dct_scale(100_000, 480), 1);
        assert_eq!(dct_scale(100, 480), 8);
    }

    /// A reduced decode is half (or a quarter...) the size, rounded up, and
    /// its pixels those of the full decode averaged over 2x2 blocks, to
    /// within the scaled inverse DCT's own rounding: on the bundled photos.
    #[test]
    fn reduced_decode_is_the_full_decode_at_half_size() {
        let (mut full, mut half) = (Vec::new(), Vec::new());
        let (mut worst, mut total, mut files) = (0f64, 0f64, 0f64);
        for (path, bytes) in sample_jpegs() {
            let (info, _) = lj(&bytes, &mut full, Region::full).unwrap();
            let (w, h) = (info.width as usize, info.height as usize);
            let min = (w.min(h) as u32).div_ceil(2);
            let (info2, r) = super::decode(
                &bytes,
                &mut half,
                Some(&move |_, _, _| min),
                &mut Region::full,
            )
            .unwrap();
            assert_eq!((info2.width, info2.height), (info.width, info.height));
            let (hw, hh) = (w.div_ceil(2), h.div_ceil(2));
            assert_eq!((r.width as usize, r.height as usize), (hw, hh), "{path:?}");
            assert_eq!(half.len(), hw * hh * 3);
            let (mut diff, mut n) = (0f64, 0f64);
            for y in 0..h / 2 {
                for x in 0..w / 2 {
                    for c in 0..3 {
                        let px = |yy: usize, xx: usize| f64::from(full[(yy * w + xx) * 3 + c]);
                        let mean = (px(2 * y, 2 * x)
                            + px(2 * y, 2 * x + 1)
                            + px(2 * y + 1, 2 * x)
                            + px(2 * y + 1, 2 * x + 1))
                            / 4.0;
                        diff += (f64::from(half[(y * hw + x) * 3 + c]) - mean).abs();
                        n += 1.0;
                    }
                }
            }
            worst = worst.max(diff / n);
            (total, files) = (total + diff / n, files + 1.0);
            // Asked for more than the image has: the full decode.
            let more = w.min(h) as u32 + 1;
            let (_, r) = super::decode(
                &bytes,
                &mut half,
                Some(&move |_, _, _| more),
                &mut Region::full,
            )
            .unwrap();
            assert_eq!((r.width as usize, r.height as usize), (w, h));
            assert!(half == full, "{path:?}");
        }
        // The scaled IDCT is not a box filter: textured photos (the
        // mandrill, a 100-pixel one) differ most.
        let mean = total / files;
        assert!(
            worst < 3.5 && mean < 1.0,
            "mean |reduced - 2x2 mean of full|: {mean:.2} on average, up to {worst:.2}"
        );
    }

    /// Broken data is an error value (no abort, no panic message), and the
    /// thread's decompressor works again for the next image.
    #[test]
    fn corrupt_data_is_an_error_and_the_decoder_recovers() {
        let photos = sample_jpegs();
        let good = &photos[0].1;
        let mut out = Vec::new();
        let mut bad = good.clone();
        bad[2..40].fill(0xFF); // markers destroyed
        assert!(matches!(
            lj(&bad, &mut out, Region::full),
            Err(DecodeError::Corrupt { .. })
        ));
        let cut = &good[..good.len() / 2]; // a cut-off file decodes, grey-filled, as in zune-jpeg's lenient mode
        assert!(lj(cut, &mut out, Region::full).is_ok());
        let (info, _) = lj(good, &mut out, Region::full).unwrap();
        assert_eq!(out.len(), (info.width * info.height * 3) as usize);
    }
}
