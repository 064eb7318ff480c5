"""The training stream: block order, shard reading, weighted mixing (never imports Ray, preprocess or stats)."""
