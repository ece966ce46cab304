// The simulator: a multi-factor Gaussian model driving Heston (optionally Bates) dynamics per asset.
//
//   factor shocks   f_t = L z_t,  L L' = C                          (K correlated unit normals)
//   price driver    W_i = a_i . f_t + s_i e_i,  a_i' C a_i + s_i^2 = 1  (so corr(W_i, W_j) = a_i' C a_j)
//   variance shock  B_i = rho_i W_i + sqrt(1 - rho_i^2) p_i          (corr(W_i, B_i) = rho_i)
//
// and then either full-truncation Euler, Andersen's QE with martingale correction, or, for rough
// volatility, Abi Jaber's lifted Heston (see euler_block). For QE the
// price needs a normal independent of the variance shock: Z_i = sqrt(1 - rho_i^2) W_i - rho_i p_i is
// exactly that, and rho_i B_i + sqrt(1 - rho_i^2) Z_i gives back W_i, so both schemes see the same
// factor-driven price shock. State is kept in structure-of-arrays form; every loop over assets is
// branch-free and vectorised.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "philox.hpp"
#include "vmath.hpp"

namespace mf {

enum class Scheme : int { QE = 0, Euler = 1, Lifted = 2 };

// Arrays start on a cache line. The block loops then load and store whole lines (from malloc's 16-byte
// alignment every AVX-512 access straddled two: 5-9% of the whole step at 1,000 assets), and two
// threads' ranges (whole 512-asset blocks) never share a line.
template <class T>
struct LineAligned {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  LineAligned() = default;
  template <class U>
  LineAligned(const LineAligned<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const LineAligned<U>&) const noexcept { return true; }
};
template <class T>
using Vec = std::vector<T, LineAligned<T>>;

// Raw per-asset parameters as the Python layer hands them over (already validated there; the checks
// here only guard the C++ invariants so that a direct caller cannot corrupt memory).
struct ModelParams {
  std::size_t n_assets = 0, n_factors = 0;
  Vec<double> log_s0, mu, v0, kappa, theta, xi, rho;
  Vec<double> loadings;      // K x N, factor-major: a_i for factor k at [k * N + i]
  Vec<double> idio;          // s_i
  Vec<double> factor_chol;   // R x K x K: per regime, the lower Cholesky factor of C, row-major
  std::size_t n_regimes = 1;
  Vec<double> regime_scale{1.0};   // R: factor volatility multiplier of each regime
  Vec<double> regime_switch{1.0};  // R x R: per-step transition probabilities, rows sum to 1
  Vec<double> jump_lambda, jump_mean, jump_std;  // ln(1 + J) ~ N(jump_mean, jump_std^2)
  // Lifted (rough) Heston: the variance is v0 + sum_l c_l U_l, each U_l an Ornstein-Uhlenbeck-like
  // factor mean-reverting at speed x_l; L x N, factor-major like the loadings. Empty unless Lifted.
  std::size_t n_lift = 0;
  Vec<double> lift_weight, lift_speed;
  double dt = 0.0;
  std::uint64_t seed = 0;
  Scheme scheme = Scheme::QE;
};

// Runtime dispatch (MARKETFEED_DISPATCH, set by CMake for portable x86-64 builds): the hot paths are
// cloned for x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA) and baseline x86-64, and an ifunc picks one
// when the module loads. The build never contracts a * b + c into an FMA (-ffp-contract=off), and the
// loops are element-wise, so every copy (and a -march=native build) computes the same bits.
#if defined(MARKETFEED_DISPATCH)
#define MF_HOT [[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), gnu::flatten]]
#else
#define MF_HOT
#endif

// Counter layout of the generator: (index, step low, step high, stream).
enum Stream : std::uint32_t { kAssetStream = 0, kFactorStream = 1 };

class Engine {
 public:
  explicit Engine(ModelParams p, int threads = 1) : p_(std::move(p)) {
    const std::size_t N = p_.n_assets, K = p_.n_factors;
    auto need = [](const Vec<double>& v, std::size_t n, const char* name) {
      if (v.size() != n) throw std::invalid_argument(std::string(name) + ": wrong length");
    };
    for (auto* v : {&p_.log_s0, &p_.mu, &p_.v0, &p_.kappa, &p_.theta, &p_.xi, &p_.rho, &p_.idio,
                    &p_.jump_lambda, &p_.jump_mean, &p_.jump_std})
      need(*v, N, "per-asset parameter");
    need(p_.loadings, K * N, "loadings");
    const std::size_t R = p_.n_regimes;
    if (R == 0) throw std::invalid_argument("n_regimes must be >= 1");
    need(p_.factor_chol, R * K * K, "factor_chol");
    need(p_.regime_scale, R, "regime_scale");
    need(p_.regime_switch, R * R, "regime_switch");
    if (!(p_.dt > 0.0)) throw std::invalid_argument("dt must be > 0");
    const std::size_t L = p_.n_lift;
    if ((p_.scheme == Scheme::Lifted) != (L > 0))
      throw std::invalid_argument("the lifted scheme needs lift factors, and only it uses them");
    need(p_.lift_weight, L * N, "lift_weight");
    need(p_.lift_speed, L * N, "lift_speed");
    u_.assign(L * N, 0.0);
    set_threads(threads);
    precompute();
    x_ = p_.log_s0;
    v_ = p_.v0;
    factor_level_.assign(K, 0.0);
  }

  std::size_t n_assets() const { return p_.n_assets; }
  std::size_t n_factors() const { return p_.n_factors; }
  std::uint64_t step_index() const { return step_; }
  Scheme scheme() const { return p_.scheme; }
  double dt() const { return p_.dt; }
  int threads() const { return threads_; }
  void set_threads(int threads) {
    if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0 = one per core)");
    threads_ = threads == 0 ? static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) : threads;
  }

  const Vec<double>& log_prices() const { return x_; }
  const Vec<double>& variances() const { return v_; }
  const Vec<double>& factor_levels() const { return factor_level_; }
  const Vec<double>& lift_factors() const { return u_; }
  std::size_t regime() const { return regime_; }
  double var_scale() const { return var_scale_; }

  // A scenario overlay, applied from the next step on until changed: the prices see g * v_t instead
  // of the model's variance v_t (the variance process itself runs on untouched, so removing the
  // overlay returns to the same Heston path), and the factor shocks use `chol` (K x K, lower
  // Cholesky factor of a correlation matrix) instead of the regime's. g = 1 and an empty chol turn
  // the overlay off and restore the bit-exact model.
  void set_overlay(double var_scale, const Vec<double>& chol) {
    if (!(var_scale >= 0.0) || !std::isfinite(var_scale)) throw std::invalid_argument("var_scale must be >= 0");
    if (!chol.empty() && chol.size() != p_.n_factors * p_.n_factors)
      throw std::invalid_argument("overlay chol must be n_factors x n_factors (or empty)");
    var_scale_ = var_scale;
    overlay_chol_ = chol;
  }

  void set_state(std::uint64_t step, const Vec<double>& x, const Vec<double>& v,
                 const Vec<double>& f, std::size_t regime, const Vec<double>& u) {
    if (x.size() != p_.n_assets || v.size() != p_.n_assets || f.size() != p_.n_factors)
      throw std::invalid_argument("state arrays do not match the universe's shape");
    if (u.size() != u_.size())
      throw std::invalid_argument("state: its lifted-scheme factors do not match this simulator's");
    if (regime >= p_.n_regimes) throw std::invalid_argument("regime out of range");
    u_ = u;
    step_ = step;
    x_ = x;
    v_ = v;
    factor_level_ = f;
    regime_ = regime;
  }

  // Advance n steps. Output arrays are (rows x N), row-major. rows == n records every step;
  // rows == 1 records only the final prices and variances and the log-return over all n steps.
  void run(std::size_t n, double* prices, double* variances, double* log_returns, std::size_t rows) {
    const std::size_t N = p_.n_assets, K = p_.n_factors;
    if (n == 0) return;
    if (rows != n && rows != 1) throw std::invalid_argument("output rows must be 1 or n");
    // Factor shocks are shared by all assets: draw them once for the whole call, before threading.
    Vec<double> f(n * K, 0.0);
    Vec<double> z(K);
    const double sqdt = std::sqrt(p_.dt);
    for (std::size_t t = 0; t < n; ++t) {
      const std::uint64_t step = step_ + t;
      next_regime(step);
      const double* chol = overlay_chol_.empty() ? &p_.factor_chol[regime_ * K * K] : overlay_chol_.data();
      const double scale = p_.regime_scale[regime_];
      for (std::size_t k = 0; k < K; ++k) {
        const U32x4 r = philox4x32_10({static_cast<std::uint32_t>(k), lo(step), hi(step), kFactorStream},
                                      key0(), key1());
        z[k] = normal_from_bits(r.v[0]);
      }
      for (std::size_t k = 0; k < K; ++k) {
        double s = 0.0;
        for (std::size_t j = 0; j <= k; ++j) s += chol[k * K + j] * z[j];
        f[t * K + k] = scale * s;
        factor_level_[k] += sqdt * scale * s;
      }
    }
    const Vec<double> x_start = rows == 1 ? x_ : Vec<double>{};
    auto work = [&](std::size_t begin, std::size_t end) {
      Scratch s(std::min<std::size_t>(kBlock, end - begin));
      for (std::size_t t = 0; t < n; ++t) {
        const bool record = rows == n || t + 1 == n;
        const std::size_t row = rows == n ? t : 0;
        step_blocks(begin, end, step_ + t, &f[t * K], rows == n, record ? prices + row * N : nullptr,
                    variances + row * N, rows == n ? log_returns + row * N : nullptr, s);
      }
      if (rows == 1)
        for (std::size_t i = begin; i < end; ++i) log_returns[i] = x_[i] - x_start[i];
    };
    parallel_over_assets(work);
    step_ += n;
  }

  // The floor for the benchmark: generate exactly the random numbers that n steps consume (same
  // generator, same transforms, same blocking and threading) and nothing else.
  double draw_only(std::size_t n) {
    Vec<double> sums(static_cast<std::size_t>(threads_), 0.0);
    const std::uint64_t first = step_;
    auto work = [&](std::size_t begin, std::size_t end) {
      Scratch s(std::min<std::size_t>(kBlock, end - begin));
      double acc = 0.0;
      for (std::size_t t = 0; t < n; ++t) acc += draw_blocks(begin, end, first + t, s);
      sums[begin * sums.size() / std::max<std::size_t>(1, p_.n_assets)] += acc;
    };
    parallel_over_assets(work);
    double total = 0.0;
    for (double v : sums) total += v;
    return total;
  }

 private:
  static constexpr std::size_t kBlock = 512;  // assets per inner block: scratch stays in L1/L2

  struct Scratch {
    explicit Scratch(std::size_t n)
        : bits(4 * n), z_idio(n), z_perp(n), u_jump(n), z_jump(n), w(n), x_prev(n), drift(n) {}
    Vec<std::uint32_t> bits;  // the block's generator words: four rows of up to n
    Vec<float> z_idio, z_perp;
    Vec<double> u_jump;
    Vec<float> z_jump;
    Vec<double> w;       // factor part of the price driver
    Vec<double> x_prev;  // log-prices before the step, for per-step returns
    Vec<double> drift;   // lifted scheme: the step's variance increment before the kernel
  };

  // The hot paths: one step of the assets [begin, end), block by block, and the benchmark's floor.
  // In portable x86-64 builds MF_HOT compiles each for three instruction sets, everything they call
  // inlined into each copy (so the whole block step is vectorised for that set), and the loader picks
  // the copy for the machine. prices == nullptr: the step is not recorded.
  MF_HOT void step_blocks(std::size_t begin, std::size_t end, std::uint64_t step, const double* f,
                          bool keep_prev, double* prices, double* variances, double* log_returns,
                          Scratch& s) {
    for (std::size_t b = begin; b < end; b += kBlock) {
      const std::size_t e = std::min(end, b + kBlock);
      if (keep_prev) std::copy(x_.begin() + b, x_.begin() + e, s.x_prev.begin());
      advance_block(b, e, step, f, s);
      if (prices != nullptr) write_block(b, e, prices, variances, log_returns, s);
    }
  }

  MF_HOT double draw_blocks(std::size_t begin, std::size_t end, std::uint64_t step, Scratch& s) const {
    double acc = 0.0;
    for (std::size_t b = begin; b < end; b += kBlock) {
      const std::size_t e = std::min(end, b + kBlock);
      draw_block(b, e, step, s);
      acc += s.z_idio[0] + s.z_perp[e - b - 1];
    }
    return acc;
  }

  // The market regime is a Markov chain advanced once per step, before the factor shocks, from its own
  // counter (index 0xFFFFFFFF of the factor stream), so with one regime nothing else changes.
  void next_regime(std::uint64_t step) {
    const std::size_t R = p_.n_regimes;
    if (R == 1) return;
    const U32x4 r = philox4x32_10({0xFFFFFFFFu, lo(step), hi(step), kFactorStream}, key0(), key1());
    const double u = uniform_from_bits(r.v[0]);
    const double* row = &p_.regime_switch[regime_ * R];
    double cdf = 0.0;
    std::size_t next = R - 1;
    for (std::size_t j = 0; j < R; ++j) {
      cdf += row[j];
      if (u < cdf) {
        next = j;
        break;
      }
    }
    regime_ = next;
  }

  static std::uint32_t lo(std::uint64_t s) { return static_cast<std::uint32_t>(s); }
  static std::uint32_t hi(std::uint64_t s) { return static_cast<std::uint32_t>(s >> 32); }
  std::uint32_t key0() const { return static_cast<std::uint32_t>(p_.seed); }
  std::uint32_t key1() const { return static_cast<std::uint32_t>(p_.seed >> 32); }

  template <class F>
  void parallel_over_assets(F&& work) {
    const std::size_t N = p_.n_assets;
    // Chunks are whole blocks so every thread runs the same vectorised loop shapes; which thread
    // computes an asset never changes its random numbers (they are keyed by asset and step).
    const std::size_t blocks = (N + kBlock - 1) / kBlock;
    const std::size_t T = std::min<std::size_t>(static_cast<std::size_t>(threads_), std::max<std::size_t>(blocks, 1));
    if (T <= 1) {
      work(0, N);
      return;
    }
    std::vector<std::thread> pool;
    pool.reserve(T - 1);
    auto bounds = [&](std::size_t j) { return std::min(N, (blocks * j / T) * kBlock); };
    for (std::size_t j = 1; j < T; ++j) pool.emplace_back(work, bounds(j), bounds(j + 1));
    work(bounds(0), bounds(1));
    for (auto& th : pool) th.join();
  }

  // The block's random numbers: the generator's words for (asset, step) first, all at once (see
  // philox_block), then each word through its transform.
  void draw_block(std::size_t b, std::size_t e, std::uint64_t step, Scratch& s) const {
    const std::size_t m = e - b;
    std::uint32_t* r = s.bits.data();
    philox_block(static_cast<std::uint32_t>(b), m, lo(step), hi(step), kAssetStream, key0(), key1(), r, r + m,
                 jumps_ ? r + 2 * m : nullptr, jumps_ ? r + 3 * m : nullptr);
    const std::uint32_t *r0 = r, *r1 = r + m, *r2 = r + 2 * m, *r3 = r + 3 * m;
    float* zi = s.z_idio.data();
    float* zp = s.z_perp.data();
    double* uj = s.u_jump.data();
    float* zj = s.z_jump.data();
    normals_from_bits(r0, zi, m);
    normals_from_bits(r1, zp, m);
    if (jumps_) {
#pragma omp simd
      for (std::size_t j = 0; j < m; ++j) uj[j] = uniform_from_bits(r2[j]);
      normals_from_bits(r3, zj, m);
    }
  }

  void advance_block(std::size_t b, std::size_t e, std::uint64_t step, const double* f, Scratch& s) {
    draw_block(b, e, step, s);
    const std::size_t m = e - b, N = p_.n_assets, K = p_.n_factors;
    double* w = s.w.data();
    exposure(&p_.loadings[b], N, K, f, w, m);
    if (p_.scheme == Scheme::QE) {
      // Small steps keep psi far below 1.5 for every asset: then only the quadratic branch is needed,
      // and the exponential branch's extra logarithm and normal tail are skipped for the whole block.
      // Each asset computes the same expression either way, so results do not depend on this.
      const bool all_quadratic = qe_all_quadratic(b, m);
      if (var_scale_ != 1.0)
        qe_block<false, true>(b, m, s);
      else if (all_quadratic)
        qe_block<true, false>(b, m, s);
      else
        qe_block<false, false>(b, m, s);
    } else if (p_.scheme == Scheme::Euler) {
      euler_block<false>(b, m, s);
    } else {
      euler_block<true>(b, m, s);
    }
    if (jumps_) jump_block(b, m, s);
  }

  // The factor exposure a_i . f of assets [b, b + m) into w, from the loadings of asset b (factor k's
  // row N further on). Up to eight factors: one pass, the sum in a register (a pass per factor, which
  // stored and reloaded w each time, made Euler 6-9 % and QE-M 3-6 % slower; docs/performance.md).
  // More factors: a pass each. Both are fused(a_k, f_k, .) from 0 in factor order, so the same bits.
  template <std::size_t K>
  MF_INLINE static void exposure_of(const double* a, std::size_t N, const double* f, double* __restrict w,
                                    std::size_t m) {
#pragma omp simd
    for (std::size_t j = 0; j < m; ++j) {
      double sum = 0.0;
      for (std::size_t k = 0; k < K; ++k) sum = fused(a[k * N + j], f[k], sum);
      w[j] = sum;
    }
  }

  MF_INLINE static void exposure(const double* a, std::size_t N, std::size_t K, const double* f,
                                 double* __restrict w, std::size_t m) {
    switch (K) {
      case 1: return exposure_of<1>(a, N, f, w, m);
      case 2: return exposure_of<2>(a, N, f, w, m);
      case 3: return exposure_of<3>(a, N, f, w, m);
      case 4: return exposure_of<4>(a, N, f, w, m);
      case 5: return exposure_of<5>(a, N, f, w, m);
      case 6: return exposure_of<6>(a, N, f, w, m);
      case 7: return exposure_of<7>(a, N, f, w, m);
      case 8: return exposure_of<8>(a, N, f, w, m);
      default: break;
    }
    std::fill(w, w + m, 0.0);
    for (std::size_t k = 0; k < K; ++k) {
      const double fk = f[k];
      const double* ak = a + k * N;
#pragma omp simd
      for (std::size_t j = 0; j < m; ++j) w[j] = fused(ak[j], fk, w[j]);
    }
  }

  // Full-truncation Euler. kLifted: Abi Jaber's lifted Heston (2019) for rough volatility, which
  // shares the price step and the variance increment. The fractional kernel t^(H-1/2) / Gamma(H+1/2)
  // of rough Heston is replaced by sum_l c_l exp(-x_l t), so V = v0 + sum_l c_l U_l with
  //   dU_l = (-x_l U_l + kappa (theta - V)) dt + xi sqrt(V) dB,   U_l(0) = 0,
  // stepped with an exponential integrator: U_l' = e^{-x_l dt} U_l + phi(x_l dt) D, phi(z) = (1 - e^-z)/z,
  // D = kappa (theta - V+) dt + xi sqrt(V+) dW the Euler increment (V+ as in full truncation). The fast
  // factors are stiff (x_l dt reaches 0.1 or more): implicit Euler, 1/(1 + x dt), would damp their noise
  // by (1 + z)^-2 where the exact variance factor is (1 - e^-2z)/2z ~ phi(z)^2, and so under-state the
  // roughness. One factor with c = 1, x = 0 (e = phi = 1) is full-truncation Euler of classical Heston.
  template <bool kLifted>
  void euler_block(std::size_t b, std::size_t m, Scratch& s) {
    double* __restrict x = &x_[b];
    double* __restrict v = &v_[b];
    double* __restrict dr = s.drift.data();
    const double* w = s.w.data();
    const float* zi = s.z_idio.data();
    const float* zp = s.z_perp.data();
    const double *idio = &p_.idio[b], *rho = &rho_[b], *rc = &rc_[b], *mu = &mudt_[b],
                 *kap = &kdt_[b], *th = &p_.theta[b], *xi = &p_.xi[b], *v0 = &p_.v0[b];
    const double dt = p_.dt, g = var_scale_, sg = std::sqrt(var_scale_);
#pragma omp simd
    for (std::size_t j = 0; j < m; ++j) {
      const double ws = fused(idio[j], static_cast<double>(zi[j]), w[j]);
      const double wv = fused(rc[j], static_cast<double>(zp[j]), rho[j] * ws);
      const double vp = v[j] > 0.0 ? v[j] : 0.0;  // full truncation: v+ in drift and diffusion
      const double sq = std::sqrt(vp * dt);
      x[j] += mu[j] - 0.5 * g * vp * dt + sg * sq * ws;
      const double dv = fused(kap[j], th[j] - vp, xi[j] * sq * wv);
      if constexpr (kLifted) {
        dr[j] = dv;
        v[j] = v0[j];
      } else {
        v[j] += dv;
      }
    }
    if constexpr (kLifted) {
      if (lift_shared_)
        lift_passes<true>(b, m, v, dr);
      else
        lift_passes<false>(b, m, v, dr);
    }
  }

  // The lifted scheme's factor passes over assets [b, b + m): U_l' = e_l U_l + phi_l D, V += c_l U_l'.
  // One loop over the assets with the factors inside it, so V and D stay in registers across the
  // factors and only U_l is loaded and stored: a pass per factor loaded and stored V too, five memory
  // operations per factor and asset instead of two, and on a VM whose two vCPUs are likely two
  // hardware threads of one core (sharing its load and store ports) that made the second thread worth
  // nothing (docs/performance.md, section 1). Chunks of 8 and 64 assets were slower than 32.
  // kShared: every asset has the same kernel (one Hurst exponent), so its constants are scalars. V
  // sums the factors in the same order either way, so the same bits.
  template <bool kShared>
  void lift_passes(std::size_t b, std::size_t m, double* __restrict v, const double* __restrict dr) {
    // Chunks of kChunk assets, a few vector registers of V and D held across the factor loop (a fixed
    // trip count lets GCC keep the chunk in registers); the rest of the block, as a pass per factor.
    constexpr std::size_t kChunk = 32;
    const std::size_t whole = m / kChunk * kChunk;
    for (std::size_t j0 = 0; j0 < whole; j0 += kChunk) lift_chunk<kShared, kChunk>(b, j0, kChunk, v, dr);
    if (whole < m) lift_chunk<kShared, 0>(b, whole, m - whole, v, dr);
  }

  // kFixed > 0: exactly kFixed assets from j0, V and D in registers; 0: n assets, a pass per factor.
  template <bool kShared, std::size_t kFixed>
  MF_INLINE void lift_chunk(std::size_t b, std::size_t j0, std::size_t n, double* __restrict v,
                            const double* __restrict dr) {
    const std::size_t N = p_.n_assets, L = p_.n_lift;
    if constexpr (kFixed > 0) {
      double vv[kFixed], dd[kFixed];
      for (std::size_t j = 0; j < kFixed; ++j) {
        vv[j] = v[j0 + j];
        dd[j] = dr[j0 + j];
      }
      for (std::size_t l = 0; l < L; ++l) {
        double* __restrict u = &u_[l * N + b + j0];
        const std::size_t at = l * N + (kShared ? 0 : b + j0);
        const double *c = &p_.lift_weight[at], *d = &lift_decay_[at], *ph = &lift_phi_[at];
#pragma omp simd
        for (std::size_t j = 0; j < kFixed; ++j) {
          const std::size_t k = kShared ? 0 : j;
          u[j] = fused(u[j], d[k], ph[k] * dd[j]);
          vv[j] = fused(c[k], u[j], vv[j]);
        }
      }
      for (std::size_t j = 0; j < kFixed; ++j) v[j0 + j] = vv[j];
    } else {
      for (std::size_t l = 0; l < L; ++l) {
        double* __restrict u = &u_[l * N + b + j0];
        const std::size_t at = l * N + (kShared ? 0 : b + j0);
        const double *c = &p_.lift_weight[at], *d = &lift_decay_[at], *ph = &lift_phi_[at];
        double* __restrict vj = v + j0;
        const double* __restrict dj = dr + j0;
#pragma omp simd
        for (std::size_t j = 0; j < n; ++j) {
          const std::size_t k = kShared ? 0 : j;
          u[j] = fused(u[j], d[k], ph[k] * dj[j]);
          vj[j] = fused(c[k], u[j], vj[j]);
        }
      }
    }
  }

  // Whether every asset of [b, b + m) takes the quadratic branch, and the series for its logarithm.
  // psi falls as v rises (d psi / dv = -c1 E v / m^3), so psi <= 1.5 is v >= a threshold of the asset's
  // (precompute): one comparison an asset, where computing psi in a pass of its own cost 6% of the step.
  bool qe_all_quadratic(std::size_t b, std::size_t m) const {
    if (!qe_series_block_[b / kBlock]) return false;
    const double *v = &v_[b], *vq = &qe_v_quadratic_[b];
    int other = 0;
#pragma omp simd reduction(+ : other)
    for (std::size_t j = 0; j < m; ++j) other += v[j] >= vq[j] ? 0 : 1;
    return other == 0;
  }

  // ln(1 - y) for |y| <= 1/32: -(y + y^2/2 + ... + y^10/10), the rest below 2^-53 of the sum.
  MF_INLINE static double log1m_small(double y) {
    static constexpr double kP[] = {1.0 / 10.0, 1.0 / 9.0, 1.0 / 8.0, 1.0 / 7.0, 1.0 / 6.0,
                                    1.0 / 5.0,  1.0 / 4.0, 1.0 / 3.0, 1.0 / 2.0, 1.0};
    return -y * horner(y, kP);
  }

  // kOverlay: the prices see var_scale * v. Andersen's martingale correction assumes g = 1, so that
  // path uses the plain central discretisation of the integrated variance instead (an overlay is a
  // short-lived scenario; its O(dt) drift bias is immaterial there).
  //
  // Divisions and square roots share one unit, slow for doubles (the four left here are still 30% of
  // the step on the Intel VM measured, docs/performance.md), so the quadratic branch is written with one
  // division and three square roots where Andersen's formulas as printed take five and three:
  //   v' = a (b + zv)^2,  b^2 = 2/psi - 1 + sqrt(2/psi (2/psi - 1)),  a = m / (1 + b^2),
  //   ln M = A b^2 a / (1 - 2 A a) - ln(1 - 2 A a) / 2   (the martingale correction, eq. 38).
  // With 2/psi = n / s^2, T = n - s^2, Q = sqrt(n T), G = T + Q, D1 = n + Q (= s^2 (1 + b^2)) and
  // D2 = D1 - 2 A m s^2 (= D1 (1 - 2 A a)):
  //   b^2 = G / s^2,  a = m s^2 / D1,  a (b + zv)^2 = (m / D1) (G + 2 zv sqrt(s^2 G) + s^2 zv^2),
  //   2 A a = 2 A m s^2 / D1,  A b^2 a / (1 - 2 A a) = A m G / D2,
  // and 1 / D1, 1 / D2 both come from R = 1 / (D1 D2). The logarithm is a series for assets whose
  // |2 A a| <= 1/32 whatever their variance (precompute: with dt of a month or less, every asset), else
  // vlog, whose own division the series saves.
  template <bool kQuadraticOnly, bool kOverlay>
  void qe_block(std::size_t b, std::size_t m, Scratch& s) {
    double* __restrict x = &x_[b];
    double* __restrict v = &v_[b];
    const double* w = s.w.data();
    const float* zi = s.z_idio.data();
    const float* zp = s.z_perp.data();
    const double *idio = &p_.idio[b], *rho = &rho_[b], *rc = &rc_[b], *mu = &mudt_[b], *th = &p_.theta[b],
                 *E = &E_[b], *c1 = &c1_[b], *c2 = &c2_[b], *K2 = &K2_[b], *K3 = &K3_[b], *A = &A_[b],
                 *kap = &p_.kappa[b], *xi = &p_.xi[b], *vquad = &qe_v_quadratic_[b], *series = &qe_series_[b];
    const double dt = p_.dt, g = var_scale_, sg = std::sqrt(var_scale_);
#pragma omp simd
    for (std::size_t j = 0; j < m; ++j) {
      const double ws = fused(idio[j], static_cast<double>(zi[j]), w[j]);
      const double zv = fused(rc[j], static_cast<double>(zp[j]), rho[j] * ws);   // variance shock
      const double zs = fused(rc[j], ws, -rho[j] * static_cast<double>(zp[j]));  // independent of zv
      const double v0 = v[j];
      // QE's moments of v' given v (Andersen 2008, eq. 17-18): m = theta + (v - theta) e^{-kappa dt}
      // and s^2 = v c1 + c2, with n = 2 m^2 so that 2 / psi = n / s^2 is never divided out.
      const double mm = fused(v0 - th[j], E[j], th[j]);
      const double n = 2.0 * (mm * mm);
      const double s2 = fused(v0, c1[j], c2[j]);
      // Quadratic branch (T clamped to the branch's domain, T >= n / 4, so that unused lanes stay finite).
      const double T = n - s2 > 0.25 * n ? n - s2 : 0.25 * n;
      const double Q = std::sqrt(n * T);
      const double G = T + Q;
      const double D1 = n + Q;
      // D2 > 0 is Andersen's condition A < 1 / (2a) for the correction to exist; outside it D2 is
      // clamped so that the lane stays finite.
      const double D2raw = D1 - 2.0 * A[j] * mm * s2;
      const double D2 = D2raw > 0x1p-60 * D1 ? D2raw : 0x1p-60 * D1;
      const double R = 1.0 / (D1 * D2);
      const double m_d1 = mm * (D2 * R);  // m / D1
      const double sq = fused(s2 * zv, zv, fused(2.0 * zv, std::sqrt(s2 * G), G));
      const double vq = sq > 0.0 ? m_d1 * sq : 0.0;
      const double y = 2.0 * A[j] * s2 * m_d1;      // 2 A a
      const double corr = A[j] * mm * G * (D1 * R);  // A b^2 a / (1 - 2 A a)
      double v1, log_m;
      if constexpr (kQuadraticOnly) {
        v1 = vq;
        log_m = corr - 0.5 * log1m_small(y);
      } else {
        const bool quadratic = v0 >= vquad[j];
        const double one_m_y = D2 * D2 * R;  // D2 / D1
        // Exponential branch: v' = 0 with probability p, else exponential tail; U = Phi(zv).
        // p = (psi - 1) / (psi + 1) with psi = 2 s^2 / n, clamped to psi >= 1.5 (s^2 >= 0.75 n).
        const double se = s2 > 0.75 * n ? s2 : 0.75 * n;
        const double p = (2.0 * se - n) / (2.0 * se + n);
        const double beta = (1.0 - p) / mm;
        const double tail = normal_upper_tail(zv);  // 1 - U
        const double ratio = (1.0 - p) / (tail > 1e-300 ? tail : 1e-300);
        // Martingale correction (Andersen 2008, eq. 38-39): one log serves whichever branch is taken,
        // unless the quadratic one's is the series.
        const double mexp = p + beta * (1.0 - p) / (beta - A[j]);
        const double larg = quadratic ? one_m_y : mexp;
        const double lg = vlog(larg > 1e-300 ? larg : 1e-300);
        log_m = quadratic ? corr - 0.5 * (series[j] != 0.0 ? log1m_small(y) : lg) : lg;
        const double ve = ratio > 1.0 ? vlog(ratio) / beta : 0.0;
        v1 = quadratic ? vq : ve;
      }
      if constexpr (kOverlay) {
        // ln S' = ln S + mu dt - g I/2 + sqrt(g) (rho/xi (v' - v - kappa theta dt + kappa I) + sqrt((1-rho^2) I) Z)
        const double I = 0.5 * dt * (v0 + v1);
        const double dwv = (v1 - v0 - kap[j] * (th[j] * dt - I)) / xi[j];
        x[j] += mu[j] - 0.5 * g * I + sg * (rho[j] * dwv + rc[j] * std::sqrt(I) * zs);
      } else {
        const double var_int = K3[j] * (v0 + v1);  // K3 == K4
        // ln S' = ln S + mu dt + K0* + K1 v + K2 v' + sqrt(K3 v + K4 v') Z, K0* = -ln M - (K1 + K3/2) v.
        x[j] += mu[j] - log_m - 0.5 * K3[j] * v0 + K2[j] * v1 + std::sqrt(var_int > 0.0 ? var_int : 0.0) * zs;
      }
      v[j] = v1;
    }
  }

  void jump_block(std::size_t b, std::size_t m, Scratch& s) {
    double* __restrict x = &x_[b];
    const double* uj = s.u_jump.data();
    const float* zj = s.z_jump.data();
    const double *ldt = &ldt_[b], *emd = &exp_mldt_[b], *jm = &p_.jump_mean[b], *js = &p_.jump_std[b],
                 *comp = &jump_comp_[b];
    const int kmax = jump_kmax_;
#pragma omp simd
    for (std::size_t j = 0; j < m; ++j) {
      // Poisson(lambda dt) by inversion, unrolled to a fixed depth so every lane runs the same code.
      double pk = emd[j], cdf = pk, count = 0.0;
      for (int k = 1; k <= kmax; ++k) {
        count += uj[j] > cdf ? 1.0 : 0.0;
        pk *= ldt[j] / static_cast<double>(k);
        cdf += pk;
      }
      x[j] += count * jm[j] + js[j] * std::sqrt(count) * static_cast<double>(zj[j]) - comp[j];
    }
  }

  // Prices and the reported variance (max(v, 0): full truncation lets the state itself dip below 0);
  // per-step log-returns when the caller records every step.
  void write_block(std::size_t b, std::size_t e, double* prices, double* variances, double* log_returns,
                   const Scratch& s) const {
    const double* x = &x_[b];
    const double* v = &v_[b];
    const double* xp = s.x_prev.data();
    const std::size_t m = e - b;
    prices += b;
    variances += b;
#pragma omp simd
    for (std::size_t j = 0; j < m; ++j) {
      prices[j] = vexp(x[j]);
      variances[j] = var_scale_ * (v[j] > 0.0 ? v[j] : 0.0);
    }
    if (log_returns) {
      log_returns += b;
#pragma omp simd
      for (std::size_t j = 0; j < m; ++j) log_returns[j] = x[j] - xp[j];
    }
  }

  void precompute() {
    const std::size_t N = p_.n_assets;
    const double dt = p_.dt;
    auto alloc = [N](Vec<double>& v) { v.assign(N, 0.0); };
    for (auto* v : {&rho_, &rc_, &mudt_, &kdt_, &E_, &c1_, &c2_, &K2_, &K3_, &A_, &ldt_, &exp_mldt_,
                    &jump_comp_, &qe_v_quadratic_, &qe_series_})
      alloc(*v);
    lift_decay_.resize(p_.lift_speed.size());
    lift_phi_.resize(p_.lift_speed.size());
    for (std::size_t i = 0; i < lift_decay_.size(); ++i) {
      const double z = p_.lift_speed[i] * dt;
      lift_decay_[i] = std::exp(-z);
      lift_phi_[i] = z > 1e-12 ? -std::expm1(-z) / z : 1.0;
    }
    lift_shared_ = N > 0 && p_.n_lift > 0;
    for (std::size_t l = 0; l < p_.n_lift && lift_shared_; ++l)
      for (std::size_t i = 1; i < N && lift_shared_; ++i)
        lift_shared_ = p_.lift_weight[l * N + i] == p_.lift_weight[l * N] &&
                       p_.lift_speed[l * N + i] == p_.lift_speed[l * N];
    jumps_ = false;
    double max_ldt = 0.0;
    for (std::size_t i = 0; i < N; ++i) {
      const double k = p_.kappa[i], th = p_.theta[i], xi = p_.xi[i], r = p_.rho[i];
      rho_[i] = r;
      rc_[i] = std::sqrt(std::max(0.0, 1.0 - r * r));
      mudt_[i] = p_.mu[i] * dt;
      kdt_[i] = k * dt;
      const double E = std::exp(-k * dt);
      E_[i] = E;
      c1_[i] = xi * xi * E * (1.0 - E) / k;
      c2_[i] = th * xi * xi * (1.0 - E) * (1.0 - E) / (2.0 * k);
      const double g = 0.5 * dt * (k * r / xi - 0.5);
      // K1 = g - rho/xi cancels against the martingale-corrected K0*, so only K2..K4 are kept.
      K2_[i] = g + r / xi;
      K3_[i] = 0.5 * dt * (1.0 - r * r);
      A_[i] = K2_[i] + 0.5 * K3_[i];
      // QE's branch: psi(v) = (c1 v + c2) / m(v)^2 falls from xi^2 / (2 kappa theta) at v = 0 as v rises,
      // so psi <= 1.5 is v >= the root of 1.5 m(v)^2 = c1 v + c2 (m(v) = E v + d), or every v when psi(0)
      // is already below. Where exactly the threshold rounds does not matter: Andersen's 1.5 is a
      // choice in [1, 2], and each branch is exact on its own side of it.
      const double d = th * (1.0 - E);
      const double a2 = 1.5 * E * E, b1 = 3.0 * E * d - c1_[i], c0 = 1.5 * d * d - c2_[i];
      double v_quadratic = 0.0;  // psi(0) <= 1.5
      if (c0 < 0.0) {
        const double root = std::sqrt(b1 * b1 - 4.0 * a2 * c0);  // of a2 v^2 + b1 v + c0, the positive one:
        if (b1 > 0.0)
          v_quadratic = -2.0 * c0 / (b1 + root);  // without the cancellation of -b1 + root
        else if (a2 > 0.0)
          v_quadratic = (root - b1) / (2.0 * a2);
        else
          v_quadratic = std::numeric_limits<double>::infinity();  // e^{-kappa dt} = 0: psi is constant, > 1.5
      }
      qe_v_quadratic_[i] = v_quadratic;
      // The quadratic branch's |2 A a| <= |A| s^2 / m <= |A| max(c1 / E, c2 / d) at any v: at most 1/32
      // makes ln(1 - 2 A a) the short series for this asset at every step.
      const double absA = std::fabs(A_[i]);
      qe_series_[i] = 32.0 * absA * c1_[i] <= E && 32.0 * absA * c2_[i] <= d ? 1.0 : 0.0;
      const double lam = p_.jump_lambda[i];
      ldt_[i] = lam * dt;
      exp_mldt_[i] = std::exp(-lam * dt);
      const double mbar = std::exp(p_.jump_mean[i] + 0.5 * p_.jump_std[i] * p_.jump_std[i]) - 1.0;
      jump_comp_[i] = lam * mbar * dt;
      if (lam > 0.0) jumps_ = true;
      max_ldt = std::max(max_ldt, lam * dt);
    }
    qe_series_block_.assign((N + kBlock - 1) / kBlock, true);
    for (std::size_t i = 0; i < N; ++i)
      if (qe_series_[i] == 0.0) qe_series_block_[i / kBlock] = false;
    // Depth of the unrolled Poisson inversion: the probability of more jumps than this in one step
    // is below 1e-15 for every asset.
    jump_kmax_ = 0;
    if (jumps_) {
      double pk = std::exp(-max_ldt), cdf = pk;
      int k = 0;
      while (1.0 - cdf > 1e-15 && k < 200) {
        ++k;
        pk *= max_ldt / k;
        cdf += pk;
      }
      jump_kmax_ = k + 1;
    }
  }

  ModelParams p_;
  int threads_ = 1;
  std::uint64_t step_ = 0;
  Vec<double> x_, v_, factor_level_;
  Vec<double> u_;  // lifted scheme's factors, L x N (empty otherwise)
  std::size_t regime_ = 0;
  double var_scale_ = 1.0;            // scenario overlay (see set_overlay)
  Vec<double> overlay_chol_;  // empty: the regime's factor correlation
  // Per-asset constants derived from the parameters and dt.
  Vec<double> rho_, rc_, mudt_, kdt_, E_, c1_, c2_, K2_, K3_, A_, ldt_, exp_mldt_, jump_comp_;
  Vec<double> lift_decay_, lift_phi_;  // e^{-x_l dt} and (1 - e^{-x_l dt}) / (x_l dt), L x N
  bool lift_shared_ = false;  // every asset has the same kernel (see euler_block)
  bool jumps_ = false;
  int jump_kmax_ = 0;
  // QE: the variance from which each asset takes the quadratic branch, whether it takes the series for
  // the correction's logarithm (1 or 0), and per block of kBlock assets whether all of them do.
  Vec<double> qe_v_quadratic_, qe_series_;
  std::vector<bool> qe_series_block_;
};

}  // namespace mf
