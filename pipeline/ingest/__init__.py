"""Raw inputs: readers (one per format, behind a registry) and the work units inputs are split into."""
