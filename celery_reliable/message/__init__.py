"""A message as publish() accepts it and the pending table keeps it: option checks, protocol headers, task checks."""
