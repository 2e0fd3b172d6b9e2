//! Inner products of an f32 query with one stored row (f32, f16 or i8 bytes, as
//! `vectors.bin` holds them), of two rows of i8 codes, and a prefetch hint for a row
//! about to be read.
//!
//! The graph walk calls these once per visited vector, so they are written with
//! AVX2/FMA/F16C intrinsics, chosen at run time (the crate is compiled for baseline
//! x86-64); elsewhere a portable loop with independent partial sums serves.

/// `q · row` for a row of `q.len()` little-endian f32 values.
#[inline]
pub fn dot_f32(q: &[f32], row: &[u8]) -> f32 {
    assert_eq!(row.len(), 4 * q.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C; lengths are checked above.
        return unsafe { x86::dot_f32(q, row) };
    }
    portable(
        q,
        row.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    )
}

/// `q · row` for a row of `q.len()` little-endian IEEE half-precision values.
#[inline]
pub fn dot_f16(q: &[f32], row: &[u8]) -> f32 {
    assert_eq!(row.len(), 2 * q.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as in `dot_f32`.
        return unsafe { x86::dot_f16(q, row) };
    }
    portable(
        q,
        row.chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
    )
}

/// `q · row` for a row of `q.len()` i8 values (the row's scale is applied by the caller).
#[inline]
pub fn dot_i8(q: &[f32], row: &[u8]) -> f32 {
    assert_eq!(row.len(), q.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as in `dot_f32`.
        return unsafe { x86::dot_i8(q, row) };
    }
    portable(q, row.iter().map(|&b| b as i8 as f32))
}

/// `a · b` for two rows of i8 codes, summed exactly in integers. Codes are in
/// [-127, 127], as the i8 writer makes them (the AVX2 kernel multiplies |a| by b with
/// a's sign, which -128 would overflow).
#[inline]
pub fn dot_i8_i8(a: &[u8], b: &[u8]) -> i32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as in `dot_f32`.
        return unsafe { x86::dot_i8_i8(a, b) };
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x as i8) * i32::from(y as i8))
        .sum()
}

/// Asks the CPU to start loading `bytes` into cache (a hint; no effect elsewhere).
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch reads nothing architecturally; the pointer is in bounds.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// 16 independent partial sums, so the loop is not one chain of dependent additions.
fn portable(q: &[f32], row: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0f32; 16];
    for (i, (x, y)) in q.iter().zip(row).enumerate() {
        acc[i % 16] += x * y;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The eight lanes of `v` summed.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
    }

    /// The tail past the last whole 16 values, one at a time.
    fn tail(q: &[f32], row: impl Iterator<Item = f32>) -> f32 {
        q.iter().zip(row).map(|(x, y)| x * y).sum()
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(q: &[f32], row: &[u8]) -> f32 {
        let whole = q.len() / 16 * 16;
        let (qp, rp) = (q.as_ptr(), row.as_ptr().cast::<f32>());
        let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..whole).step_by(16) {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), _mm256_loadu_ps(rp.add(i)), a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i + 8)), _mm256_loadu_ps(rp.add(i + 8)), b);
        }
        let rest = row[4 * whole..].chunks_exact(4);
        sum(_mm256_add_ps(a, b))
            + tail(
                &q[whole..],
                rest.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(q: &[f32], row: &[u8]) -> f32 {
        let whole = q.len() / 16 * 16;
        let (qp, rp) = (q.as_ptr(), row.as_ptr());
        let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..whole).step_by(16) {
            let lo = _mm256_cvtph_ps(_mm_loadu_si128(rp.add(2 * i).cast()));
            let hi = _mm256_cvtph_ps(_mm_loadu_si128(rp.add(2 * i + 16).cast()));
            a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), lo, a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i + 8)), hi, b);
        }
        let rest = row[2 * whole..].chunks_exact(2);
        sum(_mm256_add_ps(a, b))
            + tail(
                &q[whole..],
                rest.map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_i8(q: &[f32], row: &[u8]) -> f32 {
        let whole = q.len() / 16 * 16;
        let (qp, rp) = (q.as_ptr(), row.as_ptr());
        let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..whole).step_by(16) {
            let bytes = _mm_loadu_si128(rp.add(i).cast());
            let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(bytes, bytes)));
            a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), lo, a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i + 8)), hi, b);
        }
        sum(_mm256_add_ps(a, b)) + tail(&q[whole..], row[whole..].iter().map(|&v| v as i8 as f32))
    }

    /// 32 codes a step: |a| (unsigned) times b with a's sign, adjacent products summed
    /// to i16 (at most 2 x 127 x 127, no saturation), then pairs of those to i32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_i8_i8(a: &[u8], b: &[u8]) -> i32 {
        let whole = a.len() / 32 * 32;
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        for i in (0..whole).step_by(32) {
            let x = _mm256_loadu_si256(ap.add(i).cast());
            let y = _mm256_loadu_si256(bp.add(i).cast());
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
        }
        let quad = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
        let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
        let whole_sum = _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32::<1>(pair)));
        let rest: i32 = a[whole..]
            .iter()
            .zip(&b[whole..])
            .map(|(&x, &y)| i32::from(x as i8) * i32::from(y as i8))
            .sum();
        whole_sum + rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| (((i + seed) * 2_654_435_761 % 1000) as f32 - 500.0) / 250.0)
            .collect()
    }

    #[test]
    fn kernels_equal_the_plain_sum() {
        for n in [0usize, 1, 5, 15, 16, 17, 33, 384, 391] {
            let (q, v) = (values(n, 1), values(n, 7));
            let f32_bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let halves: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            let f16_bytes: Vec<u8> = halves.iter().flat_map(|x| x.to_le_bytes()).collect();
            let codes: Vec<i8> = v.iter().map(|x| (x * 50.0).round() as i8).collect();
            let i8_bytes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
            let plain = |row: &mut dyn Iterator<Item = f32>| -> f64 {
                q.iter().zip(row).map(|(a, b)| *a as f64 * b as f64).sum()
            };
            let cases = [
                (dot_f32(&q, &f32_bytes), plain(&mut v.iter().copied())),
                (
                    dot_f16(&q, &f16_bytes),
                    plain(&mut halves.iter().map(|h| h.to_f32())),
                ),
                (dot_i8(&q, &i8_bytes), plain(&mut codes.iter().map(|&c| c as f32))),
            ];
            for (kind, (got, want)) in ["f32", "f16", "i8"].iter().zip(cases) {
                let tolerance = 1e-4 * want.abs().max(1.0);
                assert!(
                    (got as f64 - want).abs() < tolerance,
                    "{kind}, n = {n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn the_i8_kernel_equals_the_integer_sum() {
        for n in [0usize, 1, 31, 32, 33, 64, 384, 391] {
            let code = |i: usize, seed: usize| ((i * 2_654_435_761 + seed) % 255) as i32 - 127;
            let a: Vec<u8> = (0..n).map(|i| code(i, 3) as i8 as u8).collect();
            let b: Vec<u8> = (0..n).map(|i| code(i, 101) as i8 as u8).collect();
            let want: i32 = (0..n).map(|i| code(i, 3) * code(i, 101)).sum();
            assert_eq!(dot_i8_i8(&a, &b), want, "n = {n}");
            let extremes = vec![127u8; n];
            let lows = vec![(-127i8) as u8; n];
            assert_eq!(dot_i8_i8(&extremes, &lows), -127 * 127 * n as i32, "n = {n}");
            assert_eq!(dot_i8_i8(&lows, &lows), 127 * 127 * n as i32, "n = {n}");
        }
    }

    #[test]
    fn portable_loop_equals_the_plain_sum() {
        let (q, v) = (values(391, 3), values(391, 11));
        let want: f64 = q.iter().zip(&v).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((portable(&q, v.iter().copied()) as f64 - want).abs() < 1e-3);
    }
}
