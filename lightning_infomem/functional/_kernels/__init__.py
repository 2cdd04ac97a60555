"""Compiled kernels (Numba) behind the functional core, and the threads they run on. Not public API."""
