"""`python -m mmcore.synth ...`: the generator's CLI (mmcore.synth.generate.main)."""
from mmcore.synth.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
