"""Data sources, image decoding, and (later) loaders."""
