"""Offline evaluation of drafters against the target's own distributions (DSpark's offline tau)."""
