"""The synthetic generator: landing batches of parcel records (photo, note, sensor trace).

`generate` plans a batch and writes it; `image` and `paint` render the photo, `text` the
note, `sensor` the trace, `shift` a new hub's traffic. It is a package of its own, apart
from `mmcore.data`, because it stands in for the outside world that ingest reads from.
"""
