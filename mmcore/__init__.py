"""mmcore: the parcel-condition model library and its pipeline stages."""

__version__ = "0.1.0"
