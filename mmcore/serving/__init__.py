"""What the BentoML service needs beyond the model (DESIGN §2b, §5): its request and answer bodies
(`schemas`, `limits`), what refuses a request before the model sees it (`guards`, `auth`), the
predictor adapter (`adapter`) over the torch-free runtime (`runtime`, `export`), request and
prediction ids, and the capture of answered traffic (bounded queue, background writer, blob store,
counts) that `mmcore.monitor.capture_batches` turns into landing batches. service.py stays thin by
calling in here."""
