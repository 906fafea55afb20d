"""``fastmoments demo``: train a small NumPy model with a chosen optimizer."""
