"""Quantization: primitives, observers, planning, PTQ, REx and QAT."""
