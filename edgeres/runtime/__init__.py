"""Runners for the runtimes edgeres checks its artifacts in (LiteRT, TFLite Micro, Vela, ...).

Each runner is its own module so that an optional runtime is imported only when used.
"""
