// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
//
// A counter-based generator: the output is a pure function of (counter, key). The engine keys it by
// the seed and uses (asset, step, stream) as the counter, so a number never depends on how the work
// was chunked or threaded, and any step of any asset can be regenerated on its own.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define MF_PHILOX_X86 1
#endif

namespace mf {

struct U32x4 {
  std::uint32_t v[4];
};

[[gnu::always_inline]] inline void philox_mulhilo(std::uint32_t a, std::uint32_t b, std::uint32_t& hi,
                                                  std::uint32_t& lo) {
  const std::uint64_t p = static_cast<std::uint64_t>(a) * static_cast<std::uint64_t>(b);
  hi = static_cast<std::uint32_t>(p >> 32);
  lo = static_cast<std::uint32_t>(p);
}

// Ten rounds; written without arrays-of-state so compilers keep everything in vector registers when
// the caller's loop over assets is vectorised.
[[gnu::always_inline]] inline void philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2,
                                                 std::uint32_t c3, std::uint32_t k0, std::uint32_t k1,
                                                 std::uint32_t& o0, std::uint32_t& o1, std::uint32_t& o2,
                                                 std::uint32_t& o3) {
  constexpr std::uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr std::uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    std::uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(M0, c0, hi0, lo0);
    philox_mulhilo(M1, c2, hi1, lo1);
    const std::uint32_t n0 = hi1 ^ c1 ^ k0;
    const std::uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  o0 = c0;
  o1 = c1;
  o2 = c2;
  o3 = c3;
}

inline U32x4 philox4x32_10(U32x4 ctr, std::uint32_t k0, std::uint32_t k1) {
  U32x4 out{};
  philox4x32_10(ctr.v[0], ctr.v[1], ctr.v[2], ctr.v[3], k0, k1, out.v[0], out.v[1], out.v[2], out.v[3]);
  return out;
}

// A block of generator outputs for the counters (c0 + j, c1, c2, c3), j in [0, m): out_i[j] is word i
// of block j. out2 and out3 are both null when the caller needs only two words per block. Compilers
// vectorise the scalar rounds badly: a 32 x 32 -> 64-bit product per lane becomes a widening and a
// 64 x 64 multiply (vpmullq, three micro-ops), where x86 has one instruction that multiplies the even
// 32-bit lanes into 64-bit products (pmuludq). So x86 gets two hand-written copies with that
// instruction, chosen by the CPU at run time (the same copies in every build, native or portable);
// they compute exactly the scalar function's bits, which tests/test_engine_generator.py checks for each.
enum class PhiloxIsa : int { Generic = 0, Avx2 = 1, Avx512 = 2 };

using PhiloxBlockFn = void (*)(std::uint32_t c0, std::size_t m, std::uint32_t c1, std::uint32_t c2,
                               std::uint32_t c3, std::uint32_t k0, std::uint32_t k1, std::uint32_t* out0,
                               std::uint32_t* out1, std::uint32_t* out2, std::uint32_t* out3);

inline void philox_block_generic(std::uint32_t c0, std::size_t m, std::uint32_t c1, std::uint32_t c2,
                                 std::uint32_t c3, std::uint32_t k0, std::uint32_t k1, std::uint32_t* out0,
                                 std::uint32_t* out1, std::uint32_t* out2, std::uint32_t* out3) {
  if (out2 == nullptr) {
#pragma omp simd
    for (std::size_t j = 0; j < m; ++j) {
      std::uint32_t r2, r3;
      philox4x32_10(c0 + static_cast<std::uint32_t>(j), c1, c2, c3, k0, k1, out0[j], out1[j], r2, r3);
    }
    return;
  }
#pragma omp simd
  for (std::size_t j = 0; j < m; ++j)
    philox4x32_10(c0 + static_cast<std::uint32_t>(j), c1, c2, c3, k0, k1, out0[j], out1[j], out2[j], out3[j]);
}

#if defined(MF_PHILOX_X86)
// The scalar rounds above, W lanes at a time, for any Lanes: a vector type V of W 32-bit lanes and its
// operations, each compiled for its instruction set (Avx512Lanes, Avx2Lanes below). mulhilo gives the
// hi and lo 32-bit halves of each lane's product with a multiplier from two even-lane multiplies
// (the odd lanes shifted down first). The wrappers below are flattened, so everything here is inlined
// into code for their instruction set; the tail goes through the scalar code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors passed by value: all of it is inlined
template <class Lanes>
inline void philox_lanes(std::uint32_t c0, std::size_t m, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                         std::uint32_t k0, std::uint32_t k1, std::uint32_t* out0, std::uint32_t* out1,
                         std::uint32_t* out2, std::uint32_t* out3) {
  using V = typename Lanes::V;
  constexpr std::size_t W = Lanes::kWidth;
  const V M0 = Lanes::set1(0xD2511F53u), M1 = Lanes::set1(0xCD9E8D57u);
  std::size_t j = 0;
  for (; j + W <= m; j += W) {
    V x0 = Lanes::iota(c0 + static_cast<std::uint32_t>(j));
    V x1 = Lanes::set1(c1), x2 = Lanes::set1(c2), x3 = Lanes::set1(c3);
    std::uint32_t a = k0, b = k1;
    for (int round = 0; round < 10; ++round) {
      V hi0, lo0, hi1, lo1;
      Lanes::mulhilo(x0, M0, hi0, lo0);
      Lanes::mulhilo(x2, M1, hi1, lo1);
      x0 = Lanes::xor3(hi1, x1, Lanes::set1(a));
      x2 = Lanes::xor3(hi0, x3, Lanes::set1(b));
      x1 = lo1;
      x3 = lo0;
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
    Lanes::store(out0 + j, x0);
    Lanes::store(out1 + j, x1);
    if (out2 != nullptr) {
      Lanes::store(out2 + j, x2);
      Lanes::store(out3 + j, x3);
    }
  }
  if (j < m)
    philox_block_generic(c0 + static_cast<std::uint32_t>(j), m - j, c1, c2, c3, k0, k1, out0 + j, out1 + j,
                         out2 == nullptr ? nullptr : out2 + j, out2 == nullptr ? nullptr : out3 + j);
}

struct Avx512Lanes {
  using V = __m512i;
  static constexpr std::size_t kWidth = 16;
  [[gnu::target("avx512f")]] static V set1(std::uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
  [[gnu::target("avx512f")]] static V iota(std::uint32_t first) {
    return _mm512_add_epi32(set1(first), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  [[gnu::target("avx512f")]] static V xor3(V a, V b, V c) { return _mm512_xor_si512(_mm512_xor_si512(a, b), c); }
  [[gnu::target("avx512f")]] static void store(std::uint32_t* p, V x) { _mm512_storeu_si512(p, x); }
  // One two-source permute picks each half straight from the two products (18% faster than shifting
  // and blending them). Indices 0-15 are `even`'s 32-bit words, 16-31 `odd`'s: lane 2i takes even's
  // word 2i+1 (hi) or 2i (lo), lane 2i+1 takes odd's.
  [[gnu::target("avx512f")]] static void mulhilo(V a, V mult, V& hi, V& lo) {
    const V even = _mm512_mul_epu32(a, mult), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), mult);
    hi = _mm512_permutex2var_epi32(even, _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31), odd);
    lo = _mm512_permutex2var_epi32(even, _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30), odd);
  }
};

struct Avx2Lanes {
  using V = __m256i;
  static constexpr std::size_t kWidth = 8;
  [[gnu::target("avx2")]] static V set1(std::uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
  [[gnu::target("avx2")]] static V iota(std::uint32_t first) {
    return _mm256_add_epi32(set1(first), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  [[gnu::target("avx2")]] static V xor3(V a, V b, V c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  [[gnu::target("avx2")]] static void store(std::uint32_t* p, V x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), x);
  }
  // Odd lanes shifted into place and blended in (0xAA: the odd 32-bit lanes from the second argument).
  [[gnu::target("avx2")]] static void mulhilo(V a, V mult, V& hi, V& lo) {
    const V even = _mm256_mul_epu32(a, mult), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), mult);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  }
};

[[gnu::target("avx512f"), gnu::flatten]] inline void philox_block_avx512(
    std::uint32_t c0, std::size_t m, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3, std::uint32_t k0,
    std::uint32_t k1, std::uint32_t* out0, std::uint32_t* out1, std::uint32_t* out2, std::uint32_t* out3) {
  philox_lanes<Avx512Lanes>(c0, m, c1, c2, c3, k0, k1, out0, out1, out2, out3);
}

[[gnu::target("avx2"), gnu::flatten]] inline void philox_block_avx2(
    std::uint32_t c0, std::size_t m, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3, std::uint32_t k0,
    std::uint32_t k1, std::uint32_t* out0, std::uint32_t* out1, std::uint32_t* out2, std::uint32_t* out3) {
  philox_lanes<Avx2Lanes>(c0, m, c1, c2, c3, k0, k1, out0, out1, out2, out3);
}
#pragma GCC diagnostic pop
#endif

// The best copy this CPU runs, or a given one (the tests run each).
inline PhiloxIsa philox_best_isa() {
#if defined(MF_PHILOX_X86)
  if (__builtin_cpu_supports("avx512f")) return PhiloxIsa::Avx512;
  if (__builtin_cpu_supports("avx2")) return PhiloxIsa::Avx2;
#endif
  return PhiloxIsa::Generic;
}

inline PhiloxBlockFn philox_block_fn(PhiloxIsa isa) {
  switch (isa) {
#if defined(MF_PHILOX_X86)
    case PhiloxIsa::Avx512:
      return philox_block_avx512;
    case PhiloxIsa::Avx2:
      return philox_block_avx2;
#endif
    default:
      return philox_block_generic;
  }
}

inline void philox_block(std::uint32_t c0, std::size_t m, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                         std::uint32_t k0, std::uint32_t k1, std::uint32_t* out0, std::uint32_t* out1,
                         std::uint32_t* out2, std::uint32_t* out3) {
  static const PhiloxBlockFn best = philox_block_fn(philox_best_isa());
  best(c0, m, c1, c2, c3, k0, k1, out0, out1, out2, out3);
}

}  // namespace mf
