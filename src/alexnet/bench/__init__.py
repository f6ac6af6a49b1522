"""Benchmarks behind `alexnet bench KIND`: each module here has add_arguments(parser) and run(args) -> dict.

Every benchmark warms up, times several repeats alternating with its baseline in the same
process, and reports medians, spread, the resolved settings and the environment
(runtime.environment()). Results are recorded in docs/benchmarks.md with command, machine, date.
"""

KINDS = ("lrn", "train", "infer", "loader", "step", "layers")
# Kinds that measure a layer above bench/ live with that layer (named here, imported by the CLI).
ABOVE = {"serve": "alexnet.serve.bench"}
