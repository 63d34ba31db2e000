"""Simulated tasks: a scene, a seeded initial state, a success check and a scripted expert each."""
