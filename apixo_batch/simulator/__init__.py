"""A local APIXO: the documented contract, its limits and its faults, on 127.0.0.1.

::

    async with run_simulator(SimConfig(time_scale=0.01)) as sim:
        client = ApixoClient(ApiKey("sim-key"), sim.base_url)
        ...
        assert sim.stats()["duplicate_submits"] == 0

Modules: ``config`` (every knob), ``app`` (routes and accessors), ``gate``
(auth, rolling rate limit, fault draws), ``tasks`` (task timing and status
shapes), ``files`` (result downloads), ``media`` (deterministic MP4 bytes),
``callbacks`` (webhook delivery), ``stats`` (counters), ``server`` (running it).
"""

from .app import Simulator
from .config import DEFAULT_API_KEY, SimConfig, SimKey
from .media import Mp4Content
from .server import run_simulator, simulate_command
from .tasks import SimTask

__all__ = [
    "DEFAULT_API_KEY",
    "Mp4Content",
    "SimConfig",
    "SimKey",
    "SimTask",
    "Simulator",
    "run_simulator",
    "simulate_command",
]
