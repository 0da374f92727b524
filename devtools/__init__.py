"""Tools for developing trainjobs, shared by the tests and the benchmarks (neither owns them); not installed."""
