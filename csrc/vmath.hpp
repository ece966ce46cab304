// Branch-free elementary functions that GCC and Clang vectorise inside `#pragma omp simd` loops.
//
// libm's exp/log are calls the vectoriser cannot see through (glibc's vector variants are only
// declared under -ffast-math, which we refuse because it also drops NaN/inf semantics). These are
// accurate to a few ulp over the ranges the engine uses; inputs outside them are clamped by callers.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <utility>

namespace mf {

#define MF_INLINE [[gnu::always_inline]] inline

// a * b + c with one rounding. Written out because the build never lets the compiler contract
// a * b + c by itself (-ffp-contract=off: it would do so only where the target has FMA, and builds for
// different CPUs would compute different bits). One instruction where the CPU has FMA; elsewhere
// libm's exact emulation, much slower but the same result.
MF_INLINE double fused(double a, double b, double c) { return __builtin_fma(a, b, c); }
MF_INLINE float fused(float a, float b, float c) { return __builtin_fmaf(a, b, c); }

// c[0] x^(N-1) + c[1] x^(N-2) + ... + c[N-1] by Horner's rule, one fused step per coefficient,
// unrolled at compile time (a loop here, even a short one, stops the caller's loop vectorising).
template <class T, std::size_t N, std::size_t... I>
MF_INLINE T horner_steps(T x, const T (&c)[N], std::index_sequence<I...>) {
  T p = c[0];
  ((p = fused(p, x, c[I + 1])), ...);
  return p;
}

template <class T, std::size_t N>
MF_INLINE T horner(T x, const T (&c)[N]) {
  return horner_steps(x, c, std::make_index_sequence<N - 1>{});
}

// exp(x) for x in [-700, 700] (clamped), relative error ~2e-16.
MF_INLINE double vexp(double x) {
  x = x < -700.0 ? -700.0 : (x > 700.0 ? 700.0 : x);
  // Adding 1.5 * 2^52 rounds x / ln 2 to the nearest integer n and leaves n in the low mantissa bits.
  constexpr double shifter = 0x1.8p52;
  const double kd = x * 1.4426950408889634 + shifter;
  const double n = kd - shifter;
  const std::int64_t ni = std::bit_cast<std::int64_t>(kd) - std::bit_cast<std::int64_t>(shifter);
  const double r = (x - n * 0x1.62e42fefa3800p-1) - n * 0x1.ef35793c76730p-45;  // ln 2 split in two
  // Taylor series to r^13 / 13!: |r| <= ln(2)/2 so the truncation error is below 1e-17.
  static constexpr double kP[] = {
      1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
      1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
  const double p = horner(r, kP);
  const double scale = std::bit_cast<double>(static_cast<std::uint64_t>(ni + 1023) << 52);
  return p * scale;
}

// log(x) for positive normal x, relative error ~1e-16.
MF_INLINE double vlog(double x) {
  const std::uint64_t bits = std::bit_cast<std::uint64_t>(x);
  // x = 2^e m with m in (sqrt(1/2), sqrt(2)], so that |s| <= 0.1716 below, in integer arithmetic:
  // subtracting sqrt(2)'s mantissa bits borrows from the exponent field exactly when x's mantissa is
  // at most sqrt(2)'s, which leaves e + 1022 there. (Selecting between m and m / 2 after the fact let
  // GCC compute the division below for both and select the quotient: two divisions a logarithm.)
  constexpr std::uint64_t sqrt2_mantissa = 0x6A09E667F3BCEull;  // above 1.4142135623730951's 0x...BCD
  const std::uint64_t biased = (bits - sqrt2_mantissa) >> 52;     // e + 1022
  const double m = std::bit_cast<double>(bits - ((biased - 1022) << 52));
  // The exponent as a double, exactly: its bits placed in the low mantissa bits of 2^52 give
  // 2^52 + e + 1022. Not static_cast<double>(int64): AVX2 has no vector conversion from 64-bit
  // integers (AVX-512DQ added one), so that cast kept every loop calling vlog scalar on AVX2 CPUs.
  constexpr double two52 = 0x1p52;
  const double e = std::bit_cast<double>(biased | std::bit_cast<std::uint64_t>(two52)) - two52 - 1022.0;
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  // log(m) = 2 atanh(s) = 2 (s + s^3/3 + ...); ten terms leave an error below 1e-17.
  static constexpr double kP[] = {
      1.0 / 19.0, 1.0 / 17.0, 1.0 / 15.0, 1.0 / 13.0, 1.0 / 11.0, 1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0,
      1.0 / 3.0, 1.0};
  const double p = horner(s2, kP);
  return e * 0.6931471805599453 + 2.0 * s * p;
}

// Single-precision log for positive normal x, relative error ~1e-7 (used by the normal transform).
MF_INLINE float vlogf(float x) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  std::int32_t e = static_cast<std::int32_t>(bits >> 23) - 127;
  float m = std::bit_cast<float>((bits & 0x007FFFFFu) | 0x3F800000u);
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  static constexpr float kP[] = {
      1.0f / 11.0f, 1.0f / 9.0f, 1.0f / 7.0f, 1.0f / 5.0f, 1.0f / 3.0f, 1.0f};
  const float p = horner(s2, kP);
  return static_cast<float>(e) * 0.693147182f + 2.0f * s * p;
}

// A standard normal from 32 random bits by inversion: Phi^-1(u) = sqrt(2) erfinv(2u - 1), with
// Giles' single-precision erfinv ("Approximating the erfinv function", GPU Computing Gems, 2011).
// Inversion keeps one uniform per normal (no rejection, no pairs), which is what keeps the counter
// layout simple. Both of Giles' branches are evaluated and one is selected, so the loop stays
// branch-free. u is taken from the top 24 bits at odd multiples of 2^-25, so |z| <= 5.4.

// x = 2u - 1 = (2k + 1 - 2^24) / 2^24 for the top 24 bits k: an odd integer below 2^24 in magnitude,
// so x, 1 - x and 1 + x are all exact in float. (Forming u = (k + 1/2) / 2^24 first rounds u to 1 for
// the largest k, and the logarithm below then returns nonsense.)
MF_INLINE float normal_x(std::uint32_t r) {
  const std::int32_t k = static_cast<std::int32_t>(r >> 8);
  return static_cast<float>(2 * k + 1 - (1 << 24)) * 0x1p-24f;
}

MF_INLINE float normal_w(float x) { return -vlogf((1.0f - x) * (1.0f + x)); }

constexpr float kNormalTailW = 5.0f;  // Giles' branch point: w >= 5 is |z| above about 2.9

MF_INLINE float normal_central(float w) {
  static constexpr float kPc[] = {
      2.81022636e-08f, 3.43273939e-07f, -3.5233877e-06f, -4.39150654e-06f, 0.00021858087f,
      -0.00125372503f, -0.00417768164f, 0.246640727f, 1.50140941f};
  return horner(w - 2.5f, kPc);
}

MF_INLINE float normal_tail(float w) {
  static constexpr float kPt[] = {
      -0.000200214257f, 0.000100950558f, 0.00134934322f, -0.00367342844f, 0.00573950773f,
      -0.0076224613f, 0.00943887047f, 1.00167406f, 2.83297682f};
  return horner(__builtin_sqrtf(w) - 3.0f, kPt);
}

// z = sqrt(2) erfinv(x), erfinv(x) = p x with p from either branch.
MF_INLINE float normal_z(float p, float x) { return 1.41421356f * p * x; }

MF_INLINE float normal_from_bits(std::uint32_t r) {
  const float x = normal_x(r);
  const float w = normal_w(x);
  return normal_z(w < kNormalTailW ? normal_central(w) : normal_tail(w), x);
}

// normal_from_bits for a block of words, the same bits for each. The tail branch (a square root and
// a polynomial of its own: a third of the transform's cost) is needed by one word in about 300, so by
// about one chunk of 32 in ten: each chunk computes the central branch, and the tail only if one of
// its lanes needs it. Chunks of 16, 32, 64 measured 18%, 24%, 29% faster than selecting per lane with
// AVX-512, 22%, 20%, 10% with AVX2.
MF_INLINE void normals_from_bits(const std::uint32_t* __restrict r, float* __restrict z, std::size_t m) {
  constexpr std::size_t kChunk = 32;
  std::size_t c = 0;
  for (; c + kChunk <= m; c += kChunk) {
    const std::uint32_t* rc = r + c;
    float* zc = z + c;
    int tail = 0;
#pragma omp simd reduction(| : tail)
    for (std::size_t j = 0; j < kChunk; ++j) {
      const float x = normal_x(rc[j]);
      const float w = normal_w(x);
      zc[j] = normal_z(normal_central(w), x);
      tail |= w < kNormalTailW ? 0 : 1;
    }
    if (tail == 0) continue;
#pragma omp simd
    for (std::size_t j = 0; j < kChunk; ++j) {
      const float x = normal_x(rc[j]);
      const float w = normal_w(x);
      zc[j] = w < kNormalTailW ? zc[j] : normal_z(normal_tail(w), x);
    }
  }
  for (; c < m; ++c) z[c] = normal_from_bits(r[c]);
}

// A uniform in (0, 1) from 32 random bits, in double (odd multiples of 2^-33).
MF_INLINE double uniform_from_bits(std::uint32_t r) {
  return static_cast<double>(r) * 0x1p-32 + 0x1p-33;
}

// Upper-tail normal probability Q(x) = 1 - Phi(x), relative error < 1.2e-7 (Numerical Recipes'
// Chebyshev fit of erfc), branch-free. Used by the QE scheme to turn the variance shock back into
// the uniform its exponential branch inverts, accurately in the upper tail where that matters.
MF_INLINE double normal_upper_tail(double x) {
  const double z = (x < 0.0 ? -x : x) * 0.7071067811865476;
  const double t = 1.0 / (1.0 + 0.5 * z);
  static constexpr double kP[] = {
      0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196,
      1.00002368, -1.26551223};
  const double p = horner(t, kP);
  const double erfc_z = t * vexp(-z * z + p);
  return x >= 0.0 ? 0.5 * erfc_z : 1.0 - 0.5 * erfc_z;
}

}  // namespace mf
