"""Emulated phones: LiteRT-only training and the device side of the protocol.

Nothing in this package may import TensorFlow (a phone has the LiteRT runtime only).
"""
