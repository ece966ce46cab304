// What the QE step's square roots and division cost on this CPU, against the engine's floor: how close
// to "QE-M at 50% of the random numbers alone" (issue 7) the machine's divider lets the engine come.
//
//   floor     the engine's own generator and normal transform (csrc/philox.hpp, csrc/vmath.hpp), the
//             two normals an asset draws each step: what bench/engine.py calls the floor
//   divider   the four operations of QE's quadratic branch that run on the divider unit, nothing
//             else: sqrt(n T), sqrt(s^2 G), 1 / (D1 D2) and the price's sqrt (csrc/engine.hpp, qe_block)
//
//   make bench   (or, alone, with the engine's own flags from CMakeLists.txt:)
//   g++ -std=c++20 -O3 -march=native -mprefer-vector-width=512 -fopenmp-simd -fno-math-errno
//       -fno-trapping-math bench/divider.cpp -o /tmp/divider && /tmp/divider [N] [steps]
//
// Prints nanoseconds per asset-step for each, best of 5, and the bound they set. The engine draws a
// block's numbers in one loop and then runs QE over it in another, so the divider's time adds to the
// floor's: QE-M / floor <= floor / (floor + divider), even if the rest of QE's arithmetic were free.
// (Drawing and stepping in one loop, so that the two might overlap, measured no faster on the CPU where
// this bound is below 50%: docs/performance.md, section 1.)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../csrc/philox.hpp"
#include "../csrc/vmath.hpp"

namespace {

template <class Work>
double best_ns_per_asset(int n, int steps, Work work) {
  double best = 1e300;
  for (int repeat = 0; repeat < 5; ++repeat) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) {
      work(static_cast<std::uint32_t>(s));
      // Memory may have changed, as far as the compiler knows: the divider loop's inputs are the same
      // every step, and without this it could compute their roots once and add them `steps` times.
      asm volatile("" ::: "memory");
    }
    best = std::min(best, std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
  }
  return best / (static_cast<double>(n) * steps);
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1000;
  const int steps = argc > 2 ? std::atoi(argv[2]) : std::max(1, 20'000'000 / std::max(n, 1));
  if (n < 16 || steps < 1) {
    std::fprintf(stderr, "divider: N must be at least 16 and steps at least 1\n");
    return 2;
  }
  const auto N = static_cast<std::size_t>(n);
  std::vector<std::uint32_t> bits(2 * N);
  std::vector<float> z0(N), z1(N);
  // Inputs in the ranges QE sees (n, T ~ theta^2; s^2 ~ v xi^2 dt), the results summed into the state
  // so that no operation is dead code.
  std::vector<double> n2(N), t(N), s2(N), g(N), d1(N), d2(N), v(N), out(N, 0.0);
  for (std::size_t j = 0; j < N; ++j) {
    n2[j] = 3e-3 * (1.0 + 1e-4 * static_cast<double>(j));
    t[j] = 2e-3 + 1e-7 * static_cast<double>(j);
    s2[j] = 2e-8 * (1.0 + 1e-3 * static_cast<double>(j));
    g[j] = 6e-3;
    d1[j] = 6e-3 + 1e-7 * static_cast<double>(j);
    d2[j] = 5.9e-3;
    v[j] = 0.04;
  }
  auto floor = [&](std::uint32_t step) {
    mf::philox_block(0, N, step, 0, 1, 0x1234u, 0x5678u, bits.data(), bits.data() + N, nullptr, nullptr);
    mf::normals_from_bits(bits.data(), z0.data(), N);
    mf::normals_from_bits(bits.data() + N, z1.data(), N);
  };
  auto divider = [&](std::uint32_t) {
    double* __restrict o = out.data();
#pragma omp simd
    for (std::size_t j = 0; j < N; ++j) {
      const double q = std::sqrt(n2[j] * t[j]);
      const double r = std::sqrt(s2[j] * (g[j] + q));
      const double inv = 1.0 / (d1[j] * (d2[j] + q));
      o[j] += std::sqrt(v[j] + r * inv) * 1e-9;
    }
  };
  const double f = best_ns_per_asset(n, steps, floor);
  const double d = best_ns_per_asset(n, steps, divider);
  std::printf("divider benchmark: %d assets, %d steps; nanoseconds per asset-step (best of 5)\n", n, steps);
  std::printf("%-36s %8.3f\n", "floor (two normals)", f);
  std::printf("%-36s %8.3f\n", "divider (QE's 3 sqrt + 1 division)", d);
  std::printf("%-36s %8.2f\n", "divider / floor", d / f);
  std::printf("%-36s %7.0f%%\n", "bound on QE-M / floor", 100.0 * f / (f + d));
  std::printf("checksum %.6g %.6g\n", out[0], static_cast<double>(z0[0] + z1[N - 1]));
}
