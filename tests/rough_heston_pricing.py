"""Reference prices for rough and lifted Heston, computed independently of the engine.

Both models are affine Volterra processes (Abi Jaber, Larsson and Pulido 2019): with the kernel K,

    V_t = v0 + int_0^t K(t - s) (kappa (theta - V_s) ds + xi sqrt(V_s) dB_s),

the characteristic function of X_T = ln(S_T / S_0) (zero rates) is

    E[exp(i u X_T)] = exp( kappa theta int_0^T psi(s) ds + v0 int_0^T R(psi(s)) ds ),
    psi = K * R(psi),   R(psi) = -(u^2 + i u) / 2 + (i u rho xi - kappa) psi + xi^2 psi^2 / 2.

Rough Heston has K(t) = t^(alpha-1) / Gamma(alpha), alpha = H + 1/2, so psi solves the fractional
Riccati equation D^alpha psi = R(psi) (El Euch and Rosenbaum 2019), solved here with the fractional
Adams predictor-corrector of Diethelm, Ford and Freed. Lifted Heston has K(t) = sum_l c_l exp(-x_l t),
so psi = sum_l c_l psi_l with psi_l' = -x_l psi_l + R(psi): an ordinary (stiff) system.
Calls come from Lewis's formula, one integral over the characteristic function at u - i/2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from heston_pricing import HestonParams

ComplexArray = npt.NDArray[np.complex128]
FloatArray = npt.NDArray[np.float64]

# Lewis's integrand falls like |phi(u - i/2)| / u^2; by u = 200 it is below 1e-12 for the cases here.
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(400)
_U = 100.0 * (_NODES + 1.0)  # Gauss-Legendre on [0, 200]
_W = 100.0 * _WEIGHTS


def _riccati(p: HestonParams, u: ComplexArray) -> Callable[[ComplexArray], ComplexArray]:
    a = -0.5 * (u * u + 1j * u)
    b = 1j * u * p.rho * p.xi - p.kappa
    c = 0.5 * p.xi**2
    return lambda psi: a + b * psi + c * psi * psi


def _trapezoid(values: ComplexArray, h: float) -> ComplexArray:
    out: ComplexArray = h * (values.sum(axis=0) - 0.5 * (values[0] + values[-1]))
    return out


def rough_char_fn(p: HestonParams, hurst: float, u: ComplexArray, steps: int = 400) -> ComplexArray:
    """E[exp(i u ln(S_T/S_0))] under rough Heston, for every u at once (fractional Adams scheme)."""
    alpha = hurst + 0.5
    r = _riccati(p, u)
    h = p.t / steps
    psi = np.zeros((steps + 1, u.size), dtype=np.complex128)
    f = np.zeros_like(psi)
    f[0] = r(psi[0])
    k = np.arange(steps + 1, dtype=np.float64)
    ca = h**alpha / math.gamma(alpha + 2)
    cb = h**alpha / math.gamma(alpha + 1)
    for n in range(steps):
        j = k[: n + 1]
        # Predictor: product rectangle rule; corrector: product trapezoidal rule.
        b = cb * ((n + 1 - j) ** alpha - (n - j) ** alpha)
        predictor = b @ f[: n + 1]
        a = ca * ((n - j + 2) ** (alpha + 1) + (n - j) ** (alpha + 1) - 2 * (n - j + 1) ** (alpha + 1))
        a[0] = ca * (n ** (alpha + 1) - (n - alpha) * (n + 1) ** alpha)
        psi[n + 1] = a @ f[: n + 1] + ca * r(predictor)
        f[n + 1] = r(psi[n + 1])
    exponent = p.kappa * p.theta * _trapezoid(psi, h) + p.v0 * _trapezoid(f, h)
    out: ComplexArray = np.exp(exponent)
    return out


def lifted_char_fn(
    p: HestonParams, weights: FloatArray, speeds: FloatArray, u: ComplexArray, steps: int = 4000
) -> ComplexArray:
    """E[exp(i u ln(S_T/S_0))] under lifted Heston with kernel sum_l c_l exp(-x_l t).

    The fastest factors make the system stiff (x_l h far above 1), so it is stepped with the
    second-order exponential Runge-Kutta scheme ETD2RK (Cox and Matthews 2002), exact in the linear
    part: psi_l <- e^{-z} psi_l + h phi1(z) R + h phi2(z) (R(predicted) - R), z = x_l h.
    """
    r = _riccati(p, u)
    c = weights[:, None]
    h = p.t / steps
    z = speeds[:, None] * h
    small = z < 1e-4  # series where the closed forms cancel catastrophically
    zs = np.where(small, 1.0, z)
    decay = np.exp(-z)
    phi1 = np.where(small, 1.0 - z / 2, -np.expm1(-zs) / zs)
    phi2 = np.where(small, 0.5 - z / 6, (np.expm1(-zs) + zs) / (zs * zs))
    psi_l = np.zeros((weights.size, u.size), dtype=np.complex128)
    psi = np.zeros((steps + 1, u.size), dtype=np.complex128)
    for n in range(steps):
        f0 = r(psi[n])
        predicted = decay * psi_l + h * phi1 * f0
        psi_l = predicted + h * phi2 * (r((c * predicted).sum(axis=0)) - f0)
        psi[n + 1] = (c * psi_l).sum(axis=0)
    # int_0^T psi g0(T - s) ds with g0(t) = v0 + kappa theta int_0^t K: the same two terms as rough.
    exponent = p.kappa * p.theta * _trapezoid(psi, h) + p.v0 * _trapezoid(r(psi), h)
    out: ComplexArray = np.exp(exponent)
    return out


def lewis_calls(
    p: HestonParams, char_fn: Callable[[ComplexArray], ComplexArray], strikes: FloatArray
) -> FloatArray:
    """C(K) = S0 - sqrt(S0 K) / pi int_0^inf Re[e^{i u ln(S0/K)} phi(u - i/2)] / (u^2 + 1/4) du."""
    phi = char_fn((_U - 0.5j).astype(np.complex128))
    k = np.log(p.s0 / np.asarray(strikes, dtype=np.float64))
    integrand = (np.exp(1j * np.outer(k, _U)) * phi).real / (_U * _U + 0.25)
    out: FloatArray = p.s0 - np.sqrt(p.s0 * strikes) / math.pi * (integrand @ _W)
    return out
