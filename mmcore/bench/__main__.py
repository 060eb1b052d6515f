"""`python -m mmcore.bench <name> ...`: the one entry point of the benchmarks (mmcore.bench.main)."""
from mmcore.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
