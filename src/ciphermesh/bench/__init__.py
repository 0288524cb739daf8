"""Benchmarks behind `ciphermesh bench`: measuring logic only, the CLI just parses and prints."""
