"""Reference prices for the engine's tests, computed independently of the engine.

Heston and Bates European calls by Fourier inversion of the characteristic function, which is written
in the "little Heston trap" form of Albrecher, Mayer, Schoutens and Tistaert (2007): it stays on the
principal branch of the complex logarithm for long maturities, where Heston's original form jumps
branches and gives wrong prices. The call is Gil-Pelaez: C = S0 P1 - K e^{-rT} P2.

Black-Scholes and Merton's jump-diffusion series are here too, as limits the Fourier pricer must
reproduce when the volatility of variance goes to zero.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy.integrate import quad
from scipy.stats import norm

# For large u, |phi(u)| falls like exp(-u (v0 + kappa theta T) sqrt(1 - rho^2) / xi) (faster with
# jumps or small xi): by u = 400 the integrands are below 1e-20 for every case the tests price.
_UPPER = 400.0
# quad cannot evaluate the Gil-Pelaez integrands at u = 0 (0/0); their limit there is finite.
_LOWER = 1e-10


@dataclass(frozen=True, slots=True)
class HestonParams:
    """Risk-neutral Heston (Bates when jump_intensity > 0) parameters and a maturity."""

    s0: float
    v0: float
    kappa: float
    theta: float
    xi: float
    rho: float
    r: float
    t: float
    jump_intensity: float = 0.0  #: Bates: jumps per year
    jump_mean: float = 0.0  #: mean of ln(1 + J)
    jump_std: float = 0.0  #: standard deviation of ln(1 + J)

    @property
    def feller(self) -> bool:
        return 2 * self.kappa * self.theta >= self.xi**2

    @property
    def forward(self) -> float:
        return self.s0 * math.exp(self.r * self.t)

    @property
    def mean_jump(self) -> float:
        """m = E[J] = exp(nu + delta^2 / 2) - 1, which the compensated drift subtracts."""
        return math.exp(self.jump_mean + 0.5 * self.jump_std**2) - 1.0


def char_fn(u: complex, p: HestonParams) -> complex:
    """E[exp(i u ln S_T)] under the risk-neutral measure (Heston, times Merton's jumps if any)."""
    iu = 1j * u
    b = p.kappa - p.rho * p.xi * iu
    d = cmath.sqrt(b * b + p.xi**2 * (iu + u * u))
    # The trap: g = (b - d) / (b + d) and e^{-dT} instead of Heston's (b + d) / (b - d) and e^{dT}.
    g = (b - d) / (b + d)
    e = cmath.exp(-d * p.t)
    c = p.kappa * p.theta / p.xi**2 * ((b - d) * p.t - 2.0 * cmath.log((1.0 - g * e) / (1.0 - g)))
    dv = (b - d) / p.xi**2 * (1.0 - e) / (1.0 - g * e)
    phi = cmath.exp(iu * math.log(p.forward) + c + dv * p.v0)
    if p.jump_intensity:
        jump = cmath.exp(iu * p.jump_mean - 0.5 * p.jump_std**2 * u * u) - 1.0
        phi *= cmath.exp(p.jump_intensity * p.t * (jump - iu * p.mean_jump))
    return phi


def _integrate(f: Callable[[float], float]) -> float:
    value, _ = quad(f, _LOWER, _UPPER, limit=2000, epsabs=1e-11, epsrel=1e-10)
    return float(value)


def call_price(p: HestonParams, strike: float) -> float:
    """European call by Gil-Pelaez inversion of the characteristic function."""
    k = math.log(strike)

    def p1_integrand(u: float) -> float:
        # P1 is P2 under the share measure, whose characteristic function is phi(u - i) / phi(-i).
        return (cmath.exp(-1j * u * k) * char_fn(u - 1j, p) / (1j * u * p.forward)).real

    def p2_integrand(u: float) -> float:
        return (cmath.exp(-1j * u * k) * char_fn(u, p) / (1j * u)).real

    p1 = 0.5 + _integrate(p1_integrand) / math.pi
    p2 = 0.5 + _integrate(p2_integrand) / math.pi
    return p.s0 * p1 - strike * math.exp(-p.r * p.t) * p2


def black_scholes_call(s0: float, strike: float, r: float, t: float, sigma: float) -> float:
    sd = sigma * math.sqrt(t)
    d1 = (math.log(s0 / strike) + r * t) / sd + 0.5 * sd
    return float(s0 * norm.cdf(d1) - strike * math.exp(-r * t) * norm.cdf(d1 - sd))


def merton_call(p: HestonParams, strike: float, terms: int = 80) -> float:
    """Merton (1976): Black-Scholes with constant variance v0, conditioned on the number of jumps.

    With n jumps the log-price gains n nu plus n delta^2 of variance; the compensated drift and the
    jump sizes' own mean fold into a Poisson weight with intensity lambda (1 + m).
    """
    lam, m, t = p.jump_intensity, p.mean_jump, p.t
    weighted = lam * (1.0 + m) * t
    total = 0.0
    for n in range(terms):
        weight = (
            math.exp(-weighted + n * math.log(weighted) - math.lgamma(n + 1)) if weighted else float(n == 0)
        )
        sigma = math.sqrt(p.v0 + n * p.jump_std**2 / t)
        rate = p.r - lam * m + n * math.log1p(m) / t
        total += weight * black_scholes_call(p.s0, strike, rate, t, sigma)
    return total


def expected_variance(p: HestonParams, t: float) -> float:
    """E[v_t] = theta + (v0 - theta) e^{-kappa t}: the CIR mean, whatever the Feller condition."""
    return p.theta + (p.v0 - p.theta) * math.exp(-p.kappa * t)
