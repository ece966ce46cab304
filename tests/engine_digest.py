"""Digests of the engine's output for fixed markets, one per scheme: run as a script (by
tests/test_engine_isa.py) with an optional path to another build of marketfeed._engine to load first.

    python tests/engine_digest.py [path/to/_engine.so]   # prints {"mode": sha256, ...} as JSON
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import warnings


def load_engine(path: str) -> None:
    """Make `path` the marketfeed._engine that marketfeed.engine imports."""
    import marketfeed

    spec = importlib.util.spec_from_file_location("marketfeed._engine", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["marketfeed._engine"] = module
    marketfeed._engine = module


def digests() -> dict[str, str]:
    from test_engine_determinism import mixed_universe, rough  # tests/ is this script's directory

    from marketfeed.engine import FellerConditionWarning, Scheme, Simulator

    # 600 assets: a full 512-asset block and a partial one (vector loops with remainders), every fifth
    # breaking Feller's condition, so QE takes its exponential branch as well as its quadratic one.
    universe = mixed_universe(600)
    modes = {
        "qe": (universe, Scheme.QE, False),
        "qe-jumps": (universe, Scheme.QE, True),
        "euler": (universe, Scheme.EULER, False),
        "lifted": (rough(universe, per_asset=False), Scheme.LIFTED, False),
        "lifted-per-asset": (rough(universe, per_asset=True), Scheme.LIFTED, False),
    }
    out = {}
    for name, (u, scheme, jumps) in modes.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FellerConditionWarning)
            sim = Simulator(u, dt=1.0 / 252, seed=20261201, scheme=scheme, jumps=jumps, threads=2)
        paths = sim.paths(250)
        h = hashlib.sha256()
        for array in (paths.prices, paths.variances, paths.log_returns):
            h.update(array.tobytes())
        h.update(sim.state().to_json().encode())
        out[name] = h.hexdigest()
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        load_engine(sys.argv[1])
    from marketfeed import _engine

    print(json.dumps({"isa": _engine.isa, "digests": digests()}))
