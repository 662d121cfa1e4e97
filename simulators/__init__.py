"""Provider simulators (OpenAI, Replicate, Wix) for blogstream: real HTTP servers for the official SDKs."""

from .app import create_app
from .server import SimulatorServer
from .state import SimState

__all__ = ["SimState", "SimulatorServer", "create_app"]
