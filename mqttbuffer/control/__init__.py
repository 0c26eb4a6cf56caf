"""The control socket: one JSON request line in, one JSON reply line out."""
