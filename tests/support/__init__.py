"""Helpers the tests and benchmarks share: random-weight tiny model folders, and driving an
engine through a list of jobs."""
