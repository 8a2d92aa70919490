"""An OpenAI-compatible router simulator with known latency, speed and faults.

Tests, benchmarks and the no-key demo probe it, then compare what they measured
with the ground truth it logged.
"""

from routewatch.simulator.groundtruth import GroundTruthLog, ServedRequest
from routewatch.simulator.profiles import DEFAULT_PROFILES, FAULT_KINDS, ModelProfile, load_profiles
from routewatch.simulator.server import (
    GROUND_TRUTH,
    RunningSimulator,
    create_app,
    run_simulator_forever,
    start_simulator,
)

__all__ = [
    "DEFAULT_PROFILES",
    "FAULT_KINDS",
    "GROUND_TRUTH",
    "GroundTruthLog",
    "ModelProfile",
    "RunningSimulator",
    "ServedRequest",
    "create_app",
    "load_profiles",
    "run_simulator_forever",
    "start_simulator",
]
