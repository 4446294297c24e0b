"""Benchmarks of the framework itself (data scale, memory, throughput)."""
