"""The `neurok` console script."""
