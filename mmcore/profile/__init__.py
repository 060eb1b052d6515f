"""The production profile (PostgreSQL, S3, supervisor, nginx) and its sizing; docs/orchestration-and-loop.md."""
