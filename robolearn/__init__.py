"""robolearn: robot imitation learning on real hardware, from teleoperated demonstrations to deployment."""

__version__ = "0.1.0"
