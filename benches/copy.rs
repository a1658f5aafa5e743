//! Copy rate of frame-sized copies: the C library's `memmove` against
//! `prism_vnic::packet::copy::copy_bytes`, at relative offsets that a 12-byte virtio-net header
//! produces (plain `main`, no harness).
//!
//! Run: `cargo bench --bench copy`. Prints GB/s per frame size and destination offset. Each
//! case copies through 256 buffers 70,000 bytes apart (more than the L2 cache holds, as two
//! guests' rings do) and repeats for `BENCH_MS` milliseconds (default 300). On the reference
//! machine (AMD EPYC, glibc 2.36) `memmove` falls to about 3 GB/s from 2-3 KiB up when the
//! destination sits 1 to 15 bytes past the source modulo 4 KiB (its `rep movsb` path);
//! `copy_bytes` does not.

use std::hint::black_box;
use std::time::{Duration, Instant};

use prism_vnic::packet::copy::copy_bytes;

const BUFFERS: usize = 256;
const STRIDE: usize = 70_000;

fn rate(len: usize, dst_offset: usize, copy: impl Fn(*const u8, *mut u8, usize)) -> f64 {
    // Page-aligned allocations, so the offsets below are the offsets modulo 4 KiB.
    let layout = std::alloc::Layout::from_size_align(BUFFERS * STRIDE + 8192, 4096).unwrap();
    // SAFETY: a non-zero size; freed below with the same layout.
    let (src, dst) = unsafe { (std::alloc::alloc(layout), std::alloc::alloc(layout)) };
    assert!(!src.is_null() && !dst.is_null(), "out of memory");
    // SAFETY: both allocations hold `layout.size()` bytes.
    unsafe {
        src.write_bytes(1, layout.size());
        dst.write_bytes(2, layout.size());
    }
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(300),
    );
    let start = Instant::now();
    let mut copies = 0usize;
    while start.elapsed() < budget {
        for buffer in 0..BUFFERS {
            // SAFETY: offset + len stays inside the buffer's stride, inside the allocation.
            let (from, to) = unsafe {
                (
                    src.add(buffer * STRIDE),
                    dst.add(buffer * STRIDE + dst_offset),
                )
            };
            copy(black_box(from), black_box(to), len);
        }
        copies += BUFFERS;
    }
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: allocated above with `layout`.
    unsafe {
        std::alloc::dealloc(src, layout);
        std::alloc::dealloc(dst, layout);
    }
    (copies * len) as f64 / secs / 1e9
}

fn main() {
    println!(
        "{:>6} {:>7} | {:>12} {:>12}",
        "bytes", "offset", "memmove GB/s", "copy_bytes GB/s"
    );
    for len in [64, 1518, 2048, 4096, 9000, 65536] {
        for dst_offset in [0, 12, 44] {
            let libc = rate(len, dst_offset, |s, d, n| {
                // SAFETY: the ranges are inside the allocations (see `rate`).
                unsafe { std::ptr::copy(s, d, n) }
            });
            let ours = rate(len, dst_offset, |s, d, n| {
                // SAFETY: the ranges are inside the allocations (see `rate`).
                unsafe { copy_bytes(s, d, n) }
            });
            println!("{len:>6} {dst_offset:>7} | {libc:>12.1} {ours:>12.1}");
        }
    }
}
