"""Reference prices for the engine's tests: Heston and Bates European calls by Fourier integration.

The characteristic function is written in the "little Heston trap" form of Albrecher, Mayer,
Schoutens and Tistaert (2007), which stays on the principal branch of the complex logarithm for long
maturities; the call is Gil-Pelaez: C = S0 P1 - K e^{-rT} P2.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass

from scipy.integrate import quad


@dataclass(frozen=True)
class HestonParams:
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


def char_fn(u: complex, p: HestonParams) -> complex:
    """E[exp(i u ln S_T)] under the risk-neutral measure (Heston, times Merton jumps if any)."""
    iu = 1j * u
    b = p.kappa - p.rho * p.xi * iu
    d = cmath.sqrt(b * b + p.xi**2 * (iu + u * u))
    g = (b - d) / (b + d)
    e = cmath.exp(-d * p.t)
    c = p.kappa * p.theta / p.xi**2 * ((b - d) * p.t - 2.0 * cmath.log((1.0 - g * e) / (1.0 - g)))
    dv = (b - d) / p.xi**2 * (1.0 - e) / (1.0 - g * e)
    phi = cmath.exp(iu * (math.log(p.s0) + p.r * p.t) + c + dv * p.v0)
    if p.jump_intensity:
        m = math.exp(p.jump_mean + 0.5 * p.jump_std**2) - 1.0
        jump = cmath.exp(iu * p.jump_mean - 0.5 * p.jump_std**2 * u * u) - 1.0
        phi *= cmath.exp(p.jump_intensity * p.t * (jump - iu * m))
    return phi


def call_price(p: HestonParams, strike: float) -> float:
    """European call by Gil-Pelaez inversion of the characteristic function."""
    k = math.log(strike)
    forward = p.s0 * math.exp(p.r * p.t)  # = char_fn(-i)

    def p1_integrand(u: float) -> float:
        value = cmath.exp(-1j * u * k) * char_fn(u - 1j, p) / (1j * u * forward)
        return value.real

    def p2_integrand(u: float) -> float:
        value = cmath.exp(-1j * u * k) * char_fn(u, p) / (1j * u)
        return value.real

    p1 = 0.5 + quad(p1_integrand, 1e-10, 400.0, limit=2000, epsabs=1e-11, epsrel=1e-10)[0] / math.pi
    p2 = 0.5 + quad(p2_integrand, 1e-10, 400.0, limit=2000, epsabs=1e-11, epsrel=1e-10)[0] / math.pi
    return float(p.s0 * p1 - strike * math.exp(-p.r * p.t) * p2)


def expected_variance(p: HestonParams) -> float:
    """E[v_T] = theta + (v0 - theta) e^{-kappa T}."""
    return p.theta + (p.v0 - p.theta) * math.exp(-p.kappa * p.t)
