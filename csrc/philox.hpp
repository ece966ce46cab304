// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
//
// A counter-based generator: the output is a pure function of (counter, key). The engine keys it by
// the seed and uses (asset, step, stream) as the counter, so a number never depends on how the work
// was chunked or threaded, and any step of any asset can be regenerated on its own.
#pragma once

#include <cstdint>

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

}  // namespace mf
