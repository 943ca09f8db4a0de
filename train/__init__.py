"""Pure loss functions, preference-pair builders and training scripts (see DESIGN.md)."""
