"""Provider simulators (OpenAI, Replicate, Wix) for blogstream: real HTTP servers for the official SDKs."""

from .app import SimState, create_app
from .server import SimulatorServer

__all__ = ["SimState", "SimulatorServer", "create_app"]
