"""Runs curation jobs at scale on Ray: shard I/O, batching, corpus-wide steps, resume."""
