"""What ships and how it scores: export of the deployable model, and its evaluation."""
