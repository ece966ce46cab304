// What a second thread can give on this machine, without the engine: the two kinds of loop the
// engine's schemes are made of, each run by one thread over N assets and by two threads over half
// each (every thread runs all its steps alone: no synchronisation between them, no shared lines).
//
//   streaming    the lifted scheme's factor passes as they were until 2026-12-07: a pass per factor,
//                20 factors of state per asset read and written every step (N = 1,000: 160 KB, the
//                size of the engine's lifted state), and the sum V loaded and stored in every pass
//   chunked      the same arithmetic as the engine does it now: 32 assets at a time with V and the
//                increment held in registers across the factors, so only the factors are streamed
//   dependent    a chain of square roots and divisions per asset, like the QE step
//
//   g++ -O3 -march=native -mprefer-vector-width=512 -fopenmp-simd -pthread bench/threads.cpp -o /tmp/threads && /tmp/threads [N]
//   (512-bit vectors where the CPU has AVX-512, as the engine is built: see CMakeLists.txt)
//
// Prints million asset-steps per second, best of 5, for 1 and 2 threads, and the ratio.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <thread>

namespace {

constexpr int kFactors = 20;

double* line_aligned(std::size_t n, double value) {
  auto* p = static_cast<double*>(::operator new(n * sizeof(double), std::align_val_t{64}));
  std::fill(p, p + n, value);
  return p;
}

void streaming(double* u, double* v, const double* dr, int begin, int end, int n, int steps) {
  for (int s = 0; s < steps; ++s)
    for (int l = 0; l < kFactors; ++l) {
      double* __restrict ul = u + static_cast<std::size_t>(l) * n;
      const double decay = 0.99 - 0.01 * l, phi = 0.5, weight = 0.05;
#pragma omp simd
      for (int j = begin; j < end; ++j) {
        ul[j] = ul[j] * decay + phi * dr[j];
        v[j] = weight * ul[j] + v[j];
      }
    }
}

void chunked(double* u, double* v, const double* dr, int begin, int end, int n, int steps) {
  constexpr int kChunk = 32;
  const int whole = begin + (end - begin) / kChunk * kChunk;
  for (int s = 0; s < steps; ++s) {
    for (int j0 = begin; j0 < whole; j0 += kChunk) {
      double vv[kChunk], dd[kChunk];
      for (int j = 0; j < kChunk; ++j) vv[j] = v[j0 + j], dd[j] = dr[j0 + j];
      for (int l = 0; l < kFactors; ++l) {
        double* __restrict ul = u + static_cast<std::size_t>(l) * n + j0;
        const double decay = 0.99 - 0.01 * l, phi = 0.5, weight = 0.05;
#pragma omp simd
        for (int j = 0; j < kChunk; ++j) {
          ul[j] = ul[j] * decay + phi * dd[j];
          vv[j] = weight * ul[j] + vv[j];
        }
      }
      for (int j = 0; j < kChunk; ++j) v[j0 + j] = vv[j];
    }
    if (whole < end) streaming(u, v, dr, whole, end, n, 1);  // the last few assets, a pass per factor
  }
}

void dependent(double* v, int begin, int end, int steps) {
  for (int s = 0; s < steps; ++s)
#pragma omp simd
    for (int j = begin; j < end; ++j) v[j] = std::sqrt(v[j] * 1.0001 + 1.0) / (v[j] + 2.0);
}

template <class Work>
double rate(int threads, int n, int steps, Work work) {
  double best = 1e300;
  // Split at a multiple of 8 assets (a cache line of doubles), as the engine splits at whole blocks.
  const int half = (n / 2 + 7) / 8 * 8;
  for (int repeat = 0; repeat < 5; ++repeat) {
    const auto t0 = std::chrono::steady_clock::now();
    if (threads == 1) {
      work(0, n);
    } else {
      std::thread other(work, half, n);
      work(0, half);
      other.join();
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return static_cast<double>(n) * steps / best / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1000;
  const int steps = argc > 2 ? std::atoi(argv[2]) : std::max(1, 20'000'000 / std::max(n, 1));
  if (n < 16 || steps < 1) {
    std::fprintf(stderr, "threads: N must be at least 16 and steps at least 1\n");
    return 2;
  }
  double* u = line_aligned(static_cast<std::size_t>(kFactors) * n, 0.1);
  double* v = line_aligned(n, 0.2);
  const double* dr = line_aligned(n, 0.01);
  std::printf("threads benchmark: %d assets, %d steps; million asset-steps per second (best of 5)\n", n, steps);
  std::printf("%-10s %10s %10s %8s\n", "loop", "1 thread", "2 threads", "2T/1T");
  auto stream = [&](int begin, int end) { streaming(u, v, dr, begin, end, n, steps); };
  auto chunk = [&](int begin, int end) { chunked(u, v, dr, begin, end, n, steps); };
  auto chain = [&](int begin, int end) { dependent(v, begin, end, steps); };
  const double s1 = rate(1, n, steps, stream), s2 = rate(2, n, steps, stream);
  std::printf("%-10s %10.1f %10.1f %8.2f\n", "streaming", s1, s2, s2 / s1);
  const double c1 = rate(1, n, steps, chunk), c2 = rate(2, n, steps, chunk);
  std::printf("%-10s %10.1f %10.1f %8.2f\n", "chunked", c1, c2, c2 / c1);
  const double d1 = rate(1, n, steps, chain), d2 = rate(2, n, steps, chain);
  std::printf("%-10s %10.1f %10.1f %8.2f\n", "dependent", d1, d2, d2 / d1);
  std::printf("checksum %.6g\n", v[0] + u[0]);  // keeps the loops' results alive
}
