"""The way to the encoder: clients (in process, over a Serve handle, cached) and the batching replica."""
