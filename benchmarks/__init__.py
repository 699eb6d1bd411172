"""fhir-msc benchmarks: `python -m benchmarks [--quick] [--sizes 1000,10000]` prints a table.

Each case runs in a fresh Python process so that its peak RSS is its own. Benchmarks
measure; nothing here asserts a timing.
"""
