"""What the BentoML service needs beyond the model (DESIGN §2b, §5): request and prediction ids, and
the capture of answered traffic (bounded queue, background writer, blob store, counts) that
`mmcore.monitor.capture_batches` turns into landing batches. service.py stays thin by calling in here."""
