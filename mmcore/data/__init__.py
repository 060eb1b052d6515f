"""Data: the synthetic landing-batch generator, ingest, profiles, datasets."""
