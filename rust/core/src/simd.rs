//! Inner products of an f32 query with one stored row (f32, f16 or i8 bytes, as
//! `vectors.bin` holds them), and a prefetch hint for a row about to be read.
//!
//! The re-scoring of a graph search's candidates calls these once per candidate, so
//! they are written with intrinsics, chosen at run time (the crate is compiled for
//! baseline x86-64): AVX-512 where the CPU has it (16 lanes), else AVX2/FMA/F16C
//! (8 lanes), else a portable loop with independent partial sums. Every path stays
//! callable through [`Isa`], so the tests run the narrower ones on a wider CPU too.

/// An instruction set the kernels may use, narrowest first (so `min` picks the
/// narrower of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    /// AVX2, FMA and F16C.
    Avx2,
    /// AVX-512 Foundation, with the AVX2 set.
    Avx512,
}

impl Isa {
    /// The widest set this CPU has (asked once).
    pub fn detected() -> Isa {
        use std::sync::OnceLock;
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(detect)
    }

    /// Every set this CPU can run, narrowest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&isa| isa <= Isa::detected())
            .collect()
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    let avx2 = std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c");
    if avx2 && std::is_x86_feature_detected!("avx512f") {
        Isa::Avx512
    } else if avx2 {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Portable
}

/// `q · row` for a row of `q.len()` little-endian f32 values.
#[inline]
pub fn dot_f32(q: &[f32], row: &[u8]) -> f32 {
    dot_f32_on(Isa::detected(), q, row)
}

/// `q · row` for a row of `q.len()` little-endian IEEE half-precision values.
#[inline]
pub fn dot_f16(q: &[f32], row: &[u8]) -> f32 {
    dot_f16_on(Isa::detected(), q, row)
}

/// `q · row` for a row of `q.len()` i8 values (the row's scale is applied by the caller).
#[inline]
pub fn dot_i8(q: &[f32], row: &[u8]) -> f32 {
    dot_i8_on(Isa::detected(), q, row)
}

/// [`dot_f32`] with the kernel of `isa`, or of the widest set below it the CPU has.
#[inline]
pub fn dot_f32_on(isa: Isa, q: &[f32], row: &[u8]) -> f32 {
    assert_eq!(row.len(), 4 * q.len());
    // SAFETY (each arm): the CPU has the set (`isa` is capped at the detected one);
    // lengths are checked above.
    #[cfg(target_arch = "x86_64")]
    match isa.min(Isa::detected()) {
        Isa::Avx512 => return unsafe { x86::avx512::dot_f32(q, row) },
        Isa::Avx2 => return unsafe { x86::avx2::dot_f32(q, row) },
        Isa::Portable => {}
    }
    let _ = isa;
    portable(
        q,
        row.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    )
}

/// [`dot_f16`] with the kernel of `isa`, or of the widest set below it the CPU has.
#[inline]
pub fn dot_f16_on(isa: Isa, q: &[f32], row: &[u8]) -> f32 {
    assert_eq!(row.len(), 2 * q.len());
    // SAFETY: as in `dot_f32_on`.
    #[cfg(target_arch = "x86_64")]
    match isa.min(Isa::detected()) {
        Isa::Avx512 => return unsafe { x86::avx512::dot_f16(q, row) },
        Isa::Avx2 => return unsafe { x86::avx2::dot_f16(q, row) },
        Isa::Portable => {}
    }
    let _ = isa;
    portable(
        q,
        row.chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
    )
}

/// [`dot_i8`] with the kernel of `isa`, or of the widest set below it the CPU has.
#[inline]
pub fn dot_i8_on(isa: Isa, q: &[f32], row: &[u8]) -> f32 {
    assert_eq!(row.len(), q.len());
    // SAFETY: as in `dot_f32_on`.
    #[cfg(target_arch = "x86_64")]
    match isa.min(Isa::detected()) {
        Isa::Avx512 => return unsafe { x86::avx512::dot_i8(q, row) },
        Isa::Avx2 => return unsafe { x86::avx2::dot_i8(q, row) },
        Isa::Portable => {}
    }
    let _ = isa;
    portable(q, row.iter().map(|&b| b as i8 as f32))
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
mod x86 {
    /// The tail past the last whole step, one value at a time.
    fn tail(q: &[f32], row: impl Iterator<Item = f32>) -> f32 {
        q.iter().zip(row).map(|(x, y)| x * y).sum()
    }

    fn f32_tail(q: &[f32], row: &[u8]) -> f32 {
        tail(
            q,
            row.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        )
    }

    fn f16_tail(q: &[f32], row: &[u8]) -> f32 {
        tail(
            q,
            row.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        )
    }

    fn i8_tail(q: &[f32], row: &[u8]) -> f32 {
        tail(q, row.iter().map(|&v| v as i8 as f32))
    }

    /// 16 values a step in two 8-lane accumulators.
    pub mod avx2 {
        use super::{f16_tail, f32_tail, i8_tail};
        use std::arch::x86_64::*;

        /// The eight lanes of `v` summed.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn sum(v: __m256) -> f32 {
            let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
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
            sum(_mm256_add_ps(a, b)) + f32_tail(&q[whole..], &row[4 * whole..])
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
            sum(_mm256_add_ps(a, b)) + f16_tail(&q[whole..], &row[2 * whole..])
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
            sum(_mm256_add_ps(a, b)) + i8_tail(&q[whole..], &row[whole..])
        }
    }

    /// 32 values a step in two 16-lane accumulators: half the steps of AVX2's.
    pub mod avx512 {
        use super::{f16_tail, f32_tail, i8_tail};
        use std::arch::x86_64::*;

        #[target_feature(enable = "avx512f")]
        pub unsafe fn dot_f32(q: &[f32], row: &[u8]) -> f32 {
            let whole = q.len() / 32 * 32;
            let (qp, rp) = (q.as_ptr(), row.as_ptr().cast::<f32>());
            let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for i in (0..whole).step_by(32) {
                a = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(i)), _mm512_loadu_ps(rp.add(i)), a);
                b = _mm512_fmadd_ps(
                    _mm512_loadu_ps(qp.add(i + 16)),
                    _mm512_loadu_ps(rp.add(i + 16)),
                    b,
                );
            }
            _mm512_reduce_add_ps(_mm512_add_ps(a, b)) + f32_tail(&q[whole..], &row[4 * whole..])
        }

        #[target_feature(enable = "avx512f")]
        pub unsafe fn dot_f16(q: &[f32], row: &[u8]) -> f32 {
            let whole = q.len() / 32 * 32;
            let (qp, rp) = (q.as_ptr(), row.as_ptr());
            let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for i in (0..whole).step_by(32) {
                let lo = _mm512_cvtph_ps(_mm256_loadu_si256(rp.add(2 * i).cast()));
                let hi = _mm512_cvtph_ps(_mm256_loadu_si256(rp.add(2 * i + 32).cast()));
                a = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(i)), lo, a);
                b = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(i + 16)), hi, b);
            }
            _mm512_reduce_add_ps(_mm512_add_ps(a, b)) + f16_tail(&q[whole..], &row[2 * whole..])
        }

        #[target_feature(enable = "avx512f")]
        pub unsafe fn dot_i8(q: &[f32], row: &[u8]) -> f32 {
            let whole = q.len() / 32 * 32;
            let (qp, rp) = (q.as_ptr(), row.as_ptr());
            let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for i in (0..whole).step_by(32) {
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(rp.add(i).cast())));
                let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(rp.add(i + 16).cast())));
                a = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(i)), lo, a);
                b = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(i + 16)), hi, b);
            }
            _mm512_reduce_add_ps(_mm512_add_ps(a, b)) + i8_tail(&q[whole..], &row[whole..])
        }
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

    /// Each kernel on every instruction set this CPU has (AVX2 and the portable loop
    /// run on an AVX-512 machine too) against a plain f64 sum, over lengths around
    /// each kernel's step.
    #[test]
    fn every_path_equals_the_plain_sum() {
        let plain = |q: &[f32], row: &mut dyn Iterator<Item = f32>| -> f64 {
            q.iter().zip(row).map(|(a, b)| *a as f64 * b as f64).sum()
        };
        for isa in Isa::available() {
            for n in [0usize, 1, 5, 15, 16, 17, 31, 32, 33, 63, 384, 391, 768] {
                let (q, v) = (values(n, 1), values(n, 7));
                let f32_bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                let halves: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                let f16_bytes: Vec<u8> = halves.iter().flat_map(|x| x.to_le_bytes()).collect();
                let codes: Vec<i8> = v.iter().map(|x| (x * 50.0).round() as i8).collect();
                let i8_bytes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
                let cases = [
                    (dot_f32_on(isa, &q, &f32_bytes), plain(&q, &mut v.iter().copied())),
                    (
                        dot_f16_on(isa, &q, &f16_bytes),
                        plain(&q, &mut halves.iter().map(|h| h.to_f32())),
                    ),
                    (
                        dot_i8_on(isa, &q, &i8_bytes),
                        plain(&q, &mut codes.iter().map(|&c| c as f32)),
                    ),
                ];
                for (kind, (got, want)) in ["f32", "f16", "i8"].iter().zip(cases) {
                    let tolerance = 1e-4 * want.abs().max(1.0);
                    assert!(
                        (got as f64 - want).abs() < tolerance,
                        "{isa:?} {kind}, n = {n}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_detected_set_is_what_the_cpu_reports() {
        let isas = Isa::available();
        assert_eq!(isas.first(), Some(&Isa::Portable));
        assert_eq!(isas.last(), Some(&Isa::detected()));
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx2") {
            assert_eq!(
                Isa::detected(),
                Isa::Avx512,
                "the wider registers are used where present"
            );
            assert!(isas.contains(&Isa::Avx2), "the AVX2 path stays tested");
        }
    }

    #[test]
    fn a_set_the_cpu_lacks_falls_back_to_one_it_has() {
        let (q, v) = (values(40, 3), values(40, 9));
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let want = dot_f32_on(Isa::Portable, &q, &bytes);
        assert!((dot_f32_on(Isa::Avx512, &q, &bytes) - want).abs() < 1e-4);
    }
}
