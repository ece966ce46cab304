"""Scenarios, live parameters and market events against a real server, with real HTTP clients."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import httpx
import pytest
from serverproc import ServerFactory, ServerProcess
from services import Postgres

ADMIN = {"X-API-Key": "admin-secret"}


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=ADMIN, timeout=15.0)


def get(server: ServerProcess, path: str, **params: Any) -> httpx.Response:
    return httpx.get(server.url + path, params=params, headers=ADMIN, timeout=15.0)


def vols(server: ServerProcess, symbol: str, first_seq: int, last_seq: int) -> dict[int, float]:
    """The ticks' vol by seq, waiting until the history holds them all."""
    deadline = time.monotonic() + 20
    while True:
        ticks = get(server, "/history/ticks", symbol=symbol, cursor=str(first_seq * 20 - 20), limit=5000)
        got = {t["seq"]: t["vol"] for t in ticks.json()["ticks"] if t["seq"] <= last_seq}
        if len(got) == last_seq - first_seq + 1:
            return got
        assert time.monotonic() < deadline, f"ticks {first_seq}..{last_seq} never stored"
        time.sleep(0.2)


def events(server: ServerProcess, **params: Any) -> list[dict[str, Any]]:
    r = get(server, "/history/events", **params)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["events"]
    return found


def test_a_vol_spike_jumps_by_the_root_of_its_multiplier_and_fades(server_factory: ServerFactory) -> None:
    # speed 20 at 20 steps a second: one simulated second per step, so half_life=5 is five steps.
    server = server_factory(speed=20, admin_keys="admin-secret").start()
    time.sleep(0.3)
    spike = post(server, "/admin/scenario", {"kind": "vol_spike", "multiplier": 9, "half_life": 5})
    assert spike.status_code == 202, spike.text
    step = spike.json()["at_step"]  # the first step it affects: ticks with seq = step + 1
    seen = vols(server, "QBIT", step, step + 81)
    before = seen[step]
    for j, scale in [(0, 9.0), (5, 5.0), (20, 1.5), (80, 1.0)]:
        # The model's own variance moves by well under 1 % in 80 simulated seconds.
        assert seen[step + 1 + j] / before == pytest.approx(math.sqrt(scale), rel=0.02), j
    assert get(server, "/admin/params").json()["scenarios"] == []  # expired: 8 * 2^-16 < 0.1 %


def test_live_parameters_and_correlation_scenarios(server_factory: ServerFactory) -> None:
    server = server_factory(admin_keys="admin-secret").start()
    params = get(server, "/admin/params").json()
    assert params["factors"] == ["market", "growth", "value", "energy"]
    nova = next(a for a in params["assets"] if a["symbol"] == "NOVA")
    assert {"kappa", "theta", "xi", "rho", "jump_intensity", "betas", "idio_vol"} <= set(nova)
    assert (params["scenarios"], params["overlay"]) == ([], {"var_scale": 1.0, "correlation": None})

    corr = post(server, "/admin/scenario", {"kind": "correlation", "correlation": 0.9, "half_life": 3600})
    assert corr.status_code == 202, corr.text
    assert (corr.json()["type"], corr.json()["correlation"]) == ("scenario", 0.9)
    time.sleep(0.3)
    params = get(server, "/admin/params").json()
    [active] = params["scenarios"]
    assert (active["kind"], active["correlation"], active["half_life"]) == ("correlation", 0.9, 3600)
    assert 0.99 < active["strength"] <= 1.0
    assert params["overlay"]["correlation"][0][1] == pytest.approx(0.9, abs=0.001)

    changed = httpx.patch(
        server.url + "/admin/params", json={"assets": {"NOVA": {"theta": 0.2}}}, headers=ADMIN, timeout=15
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["changes"] == {"assets": {"NOVA": {"theta": 0.2}}}
    for body in (changed.json()["params"], get(server, "/admin/params").json(), get(server, "/model").json()):
        assert next(a for a in body["assets"] if a["symbol"] == "NOVA")["theta"] == 0.2
    assert get(server, "/admin/params").json()["scenarios"][0]["kind"] == "correlation"  # kept across

    cleared = httpx.delete(server.url + "/admin/scenarios", headers=ADMIN, timeout=15)
    assert (cleared.status_code, cleared.json()["cleared"]) == (200, 1)
    time.sleep(0.3)
    assert get(server, "/admin/params").json()["overlay"] == {"var_scale": 1.0, "correlation": None}


@pytest.mark.parametrize(
    ("body", "status", "needles"),
    [
        ({"assets": {"NOPE": {"theta": 0.1}}}, 404, ["NOPE"]),
        ({"assets": {"NOVA": {"rho": 2}}}, 400, ["NOVA", "rho"]),
        ({"assets": {"NOVA": {"theta": "high"}}}, 422, ["theta"]),
        ({"assets": {"NOVA": {"s0": 10}}}, 422, ["s0"]),
        ({"correlation": [[1.0, 2.0], [2.0, 1.0]]}, 400, ["correlation", "4x4"]),
    ],
)
def test_bad_parameter_changes_get_errors_that_name_them(
    server_factory: ServerFactory, body: dict[str, Any], status: int, needles: list[str]
) -> None:
    server = server_factory().start()
    r = httpx.patch(server.url + "/admin/params", json=body, timeout=15)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    for needle in needles:
        assert needle in r.text
    theta = next(a for a in get(server, "/admin/params").json()["assets"] if a["symbol"] == "NOVA")["theta"]
    assert theta == pytest.approx(0.32**2)  # nothing changed


def test_bad_scenarios_get_errors_that_name_the_field(server: ServerProcess) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "vol_spike", "multiplier": 2, "half_life": 0}, "half_life"),
        ({"kind": "correlation", "correlation": -0.9}, "correlation"),
        ({"kind": "vol_spike", "multiplier": 2, "halflife": 5}, "halflife"),
        ({"kind": "meteor"}, "kind"),
    ]
    for body, needle in cases:
        r = post(server, "/admin/scenario", body)
        assert r.status_code in (400, 422), r.text
        assert needle in r.text


def test_control_needs_the_admin_key_when_keys_are_set(server_factory: ServerFactory) -> None:
    server = server_factory(admin_keys="admin-secret", api_keys="user-key").start()
    user = {"X-API-Key": "user-key"}
    calls = [
        ("GET", "/admin/params", None),
        ("PATCH", "/admin/params", {"assets": {"NOVA": {"theta": 0.1}}}),
        ("DELETE", "/admin/scenarios", None),
        ("POST", "/admin/scenario", {"kind": "vol_spike", "multiplier": 2}),
    ]
    for method, path, body in calls:
        for headers in ({}, user):
            r = httpx.request(method, server.url + path, json=body, headers=headers, timeout=15)
            assert r.status_code == 401, (method, path, r.text)
        r = httpx.request(method, server.url + path, json=body, headers=ADMIN, timeout=15)
        assert r.status_code in (200, 202), (method, path, r.text)
    assert httpx.get(server.url + "/history/events", timeout=15).status_code == 401
    assert httpx.get(server.url + "/history/events", headers=user, timeout=15).status_code == 200


def test_changed_parameters_and_active_scenarios_survive_a_restart(server_factory: ServerFactory) -> None:
    server = server_factory(admin_keys="admin-secret").start()
    patch = {"assets": {"UTIL": {"kappa": 6.0, "betas": [0.5, 0.0, 0.1, 0.0]}}}
    assert httpx.patch(server.url + "/admin/params", json=patch, headers=ADMIN, timeout=15).status_code == 200
    spike = post(server, "/admin/scenario", {"kind": "vol_spike", "multiplier": 4, "half_life": 36_000})
    assert spike.status_code == 202, spike.text
    time.sleep(0.5)
    before = get(server, "/admin/params").json()
    server.stop()
    server.start()
    after = get(server, "/admin/params").json()
    assert after["assets"] == before["assets"]
    assert next(a for a in after["assets"] if a["symbol"] == "UTIL")["kappa"] == 6.0
    [active] = after["scenarios"]
    assert (active["id"], active["kind"], active["at_step"]) == (
        spike.json()["id"],
        "vol_spike",
        spike.json()["at_step"],
    )
    assert (
        1.0 < after["overlay"]["var_scale"] <= before["overlay"]["var_scale"]
    )  # still fading, from where it was
    again = post(server, "/admin/scenario", {"kind": "vol_spike", "multiplier": 2, "half_life": 60})
    assert again.json()["id"] == spike.json()["id"] + 1  # ids go on


def check_events_are_stored_and_survive_a_restart(server: ServerProcess) -> None:
    post(server, "/admin/scenario", {"kind": "crash", "factor": "market", "size": -0.05})
    post(server, "/admin/scenario", {"kind": "vol_spike", "multiplier": 2, "half_life": 60})
    patch = {"assets": {"UTIL": {"kappa": 6.0}}}
    assert httpx.patch(server.url + "/admin/params", json=patch, timeout=15).status_code == 200
    assert httpx.delete(server.url + "/admin/scenarios", timeout=15).status_code == 200
    time.sleep(0.5)
    stored = events(server)
    assert [(e["type"], e.get("kind")) for e in stored] == [
        ("scenario", "crash"),
        ("scenario", "vol_spike"),
        ("params", None),
        ("scenarios_cleared", None),
    ]
    steps = [e["at_step"] for e in stored]
    assert steps == sorted(steps)
    assert stored[1]["multiplier"] == 2
    assert stored[1]["half_life"] == 60
    assert stored[2]["changes"] == patch
    # An event of step k is stored no later than the ticks of step k (seq = k + 1).
    newest = get(server, "/history/ticks", symbol="UTIL", cursor=str(steps[-1] * 20), limit=1).json()
    assert newest["ticks"], "ticks after the last event are stored"
    assert events(server, start=stored[1]["ts"] / 1e9 + 1e-6, end=stored[3]["ts"] / 1e9 - 1e-6) == [stored[2]]
    assert events(server, limit=1) == stored[:1]
    server.stop()
    server.start()
    assert events(server) == stored


def test_events_are_stored_in_sqlite(server: ServerProcess) -> None:
    check_events_are_stored_and_survive_a_restart(server)


@pytest.mark.integration
def test_events_are_stored_in_postgres(server_factory: ServerFactory, postgres: Postgres) -> None:
    dsn = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    check_events_are_stored_and_survive_a_restart(server_factory(database=dsn).start())
