"""A local provider simulator: real HTTP, documented bodies and headers, keys whose behaviour tests choose."""

from keywatch.sim.server import Simulator, SimulatorThread, build_app
from keywatch.sim.state import BEHAVIOURS, SimKey, SimState

__all__ = ["BEHAVIOURS", "SimKey", "SimState", "Simulator", "SimulatorThread", "build_app"]
