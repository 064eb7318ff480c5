"""Dataset statistics (stats.json) and the self-contained dashboard that renders them."""
