//! Bulk copies of frame bytes that stay fast whatever the two buffers' alignment.
//!
//! glibc's `memcpy`/`memmove` (2.36, x86-64) switch to `rep movsb` above about 2 KiB. On the
//! AMD EPYC (Zen 4) this project is measured on, `rep movsb` runs many times slower when the
//! destination is 1 to 15 bytes past the source modulo 4 KiB (`cargo bench --bench copy`
//! prints the figures; docs/DATAPATH.md section 5). A 12-byte virtio-net header
//! puts frames exactly there whenever the sender's frame starts at the same page offset as the
//! receiver's buffer (a sender whose header has a descriptor of its own, a receiver that takes
//! header and frame in one buffer). Jumbo frames, TSO frames of up to 64 KiB and their
//! segments are all in the affected size range.
//!
//! [`copy_bytes`] therefore moves copies of [`VECTOR_COPY_MIN`] bytes or more with unaligned
//! vector loads and stores (AVX2 where the CPU has it, else SSE2, which every x86-64 has),
//! and leaves shorter ones and overlapping ones to the C library, whose small-size paths are
//! as fast as anything here. DPDK's `rte_memcpy` avoids `rep movsb` for the same reason.

/// Copies from this many bytes on use the vector loop (glibc's `rep movsb` starts above
/// 2 KiB; below it glibc's own vector code is at least as fast).
pub const VECTOR_COPY_MIN: usize = 2048;

/// Copies `len` bytes from `src` to `dst`, which may overlap (one guest can own both ends of
/// a copy through two ports).
///
/// # Safety
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes. Either
/// may be guest memory that a guest writes meanwhile: the bytes are plain data, so a racing
/// writer garbles only its own payload, as with `ptr::copy`.
#[inline]
pub unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    let (from, to) = (src as usize, dst as usize);
    let overlap = from < to.wrapping_add(len) && to < from.wrapping_add(len);
    if len < VECTOR_COPY_MIN || overlap {
        // SAFETY: the caller's contract; `ptr::copy` allows overlap.
        unsafe { std::ptr::copy(src, dst, len) };
        return;
    }
    // SAFETY: the caller's contract, the ranges do not overlap, and len >= VECTOR_COPY_MIN.
    unsafe { vector::copy(src, dst, len) }
}

/// Copies `src` into `dst`, which must be as long (as `copy_from_slice`, without its call
/// into `memcpy` for large slices).
///
/// # Panics
/// If the lengths differ, as `copy_from_slice` does.
#[inline]
pub fn copy_slice(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_slice: lengths differ");
    // SAFETY: two live slices of `len` bytes; a `&mut` never overlaps a `&`.
    unsafe { copy_bytes(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

/// Copies the `len` bytes (at most [`SMALL_COPY_MAX`]) of a short frame into a guest's
/// buffer, `src` and `dst` not overlapping.
///
/// With AVX-512 a 64-byte frame is one store instead of the C library's two overlapping
/// ones, and no call. Each store into a line the guest's CPU holds waits in the store
/// buffer for the line; a burst of 32 small frames with two stores each filled it.
///
/// # Safety
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes; they
/// do not overlap. Either may be guest memory, as for [`copy_bytes`].
#[inline]
pub unsafe fn copy_small(src: *const u8, dst: *mut u8, len: usize) {
    debug_assert!(len <= SMALL_COPY_MAX);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512 F and BW; the caller's contract.
        return unsafe { small::copy_avx512(src, dst, len) };
    }
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// The longest copy [`copy_small`] takes.
pub const SMALL_COPY_MAX: usize = 256;

#[cfg(target_arch = "x86_64")]
mod small {
    use std::arch::x86_64::{
        _mm512_loadu_si512, _mm512_mask_storeu_epi8, _mm512_maskz_loadu_epi8, _mm512_storeu_si512,
    };

    /// Whole 64-byte stores, then one masked store for the rest (masked loads and stores
    /// touch no byte outside the mask, so nothing past either end is read or written).
    ///
    /// # Safety
    /// As [`super::copy_small`], on a CPU with AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn copy_avx512(src: *const u8, dst: *mut u8, len: usize) {
        // SAFETY: for the block, every access lies within `[0, len)` of its range.
        unsafe {
            let mut at = 0;
            while len - at >= 64 {
                let v = _mm512_loadu_si512(src.add(at).cast());
                _mm512_storeu_si512(dst.add(at).cast(), v);
                at += 64;
            }
            let rest = len - at;
            if rest > 0 {
                let mask = (1u64 << rest) - 1;
                let v = _mm512_maskz_loadu_epi8(mask, src.add(at).cast());
                _mm512_mask_storeu_epi8(dst.add(at).cast(), mask, v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_loadu_si128, _mm_storeu_si128, _mm256_loadu_si256,
        _mm256_storeu_si256,
    };

    /// # Safety
    /// Non-overlapping ranges valid for `len` bytes; `len >= 128`.
    #[inline]
    pub unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
        // std caches the answer: after the first call this is one relaxed load.
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2; the caller's contract.
            unsafe { copy_avx2(src, dst, len) }
        } else {
            // SAFETY: SSE2 is part of x86-64; the caller's contract.
            unsafe { copy_sse2(src, dst, len) }
        }
    }

    /// Generates a copy loop of four `$width`-byte unaligned loads, then four stores, per
    /// step; the last step is the final 4 x `$width` bytes, overlapping what was copied (which
    /// is harmless: the ranges do not overlap each other).
    macro_rules! copy_loop {
        ($name:ident, $feature:literal, $vector:ty, $load:ident, $store:ident) => {
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name(src: *const u8, dst: *mut u8, len: usize) {
                const WIDTH: usize = std::mem::size_of::<$vector>();
                const STEP: usize = 4 * WIDTH;
                debug_assert!(len >= STEP);
                // SAFETY: for the block, every step lies within `[0, len)` of its range.
                unsafe {
                    let mut at = 0;
                    loop {
                        let s = src.add(at) as *const $vector;
                        let d = dst.add(at) as *mut $vector;
                        let (a, b, c, e) =
                            ($load(s), $load(s.add(1)), $load(s.add(2)), $load(s.add(3)));
                        $store(d, a);
                        $store(d.add(1), b);
                        $store(d.add(2), c);
                        $store(d.add(3), e);
                        if at + STEP >= len {
                            break;
                        }
                        at = (at + STEP).min(len - STEP);
                    }
                }
            }
        };
    }

    copy_loop!(
        copy_avx2,
        "avx2",
        __m256i,
        _mm256_loadu_si256,
        _mm256_storeu_si256
    );
    copy_loop!(
        copy_sse2,
        "sse2",
        __m128i,
        _mm_loadu_si128,
        _mm_storeu_si128
    );

    #[cfg(test)]
    pub(super) use copy_sse2 as copy_baseline;
}

#[cfg(not(target_arch = "x86_64"))]
mod vector {
    /// # Safety
    /// Non-overlapping ranges valid for `len` bytes.
    #[inline]
    pub unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
    }

    #[cfg(test)]
    pub(super) use copy as copy_baseline;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Copies `len` bytes with `copy` at source and destination offsets 0-40 and checks that
    /// the bytes arrive exactly and nothing outside the destination changes.
    fn assert_copies_exactly(copy: unsafe fn(*const u8, *mut u8, usize), len: usize) {
        for (src_off, dst_off) in [(0, 0), (0, 12), (12, 0), (1, 40), (33, 7), (16, 16)] {
            let src = pattern(len + 64);
            let mut dst = vec![0xeeu8; len + 128];
            // SAFETY: both ranges are inside their vectors, which do not overlap.
            unsafe {
                copy(
                    src.as_ptr().add(src_off),
                    dst.as_mut_ptr().add(dst_off),
                    len,
                )
            };
            assert_eq!(
                &dst[dst_off..dst_off + len],
                &src[src_off..src_off + len],
                "len {len}"
            );
            assert!(
                dst[..dst_off].iter().all(|&b| b == 0xee),
                "len {len}: wrote before"
            );
            assert!(
                dst[dst_off + len..].iter().all(|&b| b == 0xee),
                "len {len}: wrote after"
            );
        }
    }

    /// Every length around the threshold and the step sizes.
    #[test]
    fn every_length_and_offset_copies_exactly_and_only_its_bytes() {
        let lengths = (0..300)
            .chain(VECTOR_COPY_MIN - 130..VECTOR_COPY_MIN + 260)
            .chain([4095, 4096, 4097, 9000, 9014, 65535, 65536]);
        for len in lengths {
            assert_copies_exactly(copy_bytes, len);
        }
    }

    /// Every length a small copy takes, around each 64-byte store.
    #[test]
    fn small_copies_of_every_length_copy_exactly_and_only_their_bytes() {
        for len in 0..=SMALL_COPY_MAX {
            assert_copies_exactly(copy_small, len);
        }
    }

    /// A small copy touches no byte past either end: a frame that ends at the last byte
    /// before an inaccessible page, copied into a buffer that ends there too, does not fault.
    #[test]
    fn small_copies_read_and_write_nothing_past_their_ends() {
        const PAGE: usize = 4096;
        // SAFETY: a fresh private anonymous mapping of four pages, the second and fourth
        // made inaccessible; unmapped at the end.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            let base = base.cast::<u8>();
            assert_eq!(
                libc::mprotect(base.add(PAGE).cast(), PAGE, libc::PROT_NONE),
                0
            );
            assert_eq!(
                libc::mprotect(base.add(3 * PAGE).cast(), PAGE, libc::PROT_NONE),
                0
            );
            let (src_end, dst_end) = (base.add(PAGE), base.add(3 * PAGE));
            for len in 0..=SMALL_COPY_MAX {
                let src = src_end.sub(len);
                for i in 0..len {
                    *src.add(i) = i as u8;
                }
                copy_small(src, dst_end.sub(len), len);
                let copied = std::slice::from_raw_parts(dst_end.sub(len), len);
                assert!(
                    copied.iter().enumerate().all(|(i, &b)| b == i as u8),
                    "len {len}"
                );
            }
            libc::munmap(base.cast(), 4 * PAGE);
        }
    }

    /// Overlapping ranges (one guest on both ends) are moved as `memmove` would.
    #[test]
    fn overlapping_ranges_move_as_memmove_does() {
        for len in [100, VECTOR_COPY_MIN, 9000] {
            for shift in [1usize, 12, 64, 4096] {
                let mut forward = pattern(len + shift);
                let expected = forward[..len].to_vec();
                let base = forward.as_mut_ptr();
                // SAFETY: both ranges are inside `forward`.
                unsafe { copy_bytes(base, base.add(shift), len) };
                assert_eq!(
                    &forward[shift..shift + len],
                    &expected[..],
                    "forward {len}/{shift}"
                );

                let mut backward = pattern(len + shift);
                let expected = backward[shift..shift + len].to_vec();
                let base = backward.as_mut_ptr();
                // SAFETY: both ranges are inside `backward`.
                unsafe { copy_bytes(base.add(shift), base, len) };
                assert_eq!(&backward[..len], &expected[..], "backward {len}/{shift}");
            }
        }
    }

    /// The fallback loop (SSE2 on x86-64, used where AVX2 is missing) copies as exactly.
    #[test]
    fn the_baseline_loop_copies_exactly() {
        for len in [128, 129, 255, 2048, 2049, 9000] {
            let src = pattern(len + 3);
            let mut dst = vec![0u8; len + 5];
            // SAFETY: non-overlapping, in bounds, len >= 128.
            unsafe { vector::copy_baseline(src.as_ptr().add(3), dst.as_mut_ptr().add(5), len) };
            assert_eq!(&dst[5..], &src[3..], "len {len}");
        }
    }
}
