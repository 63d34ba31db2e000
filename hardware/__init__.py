"""Adapters from robolearn's hardware abstraction layer to real arms, teleoperators and cameras."""
