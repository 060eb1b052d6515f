"""The production profile (PostgreSQL, S3, supervisor, nginx) and its sizing; README: production profile."""
