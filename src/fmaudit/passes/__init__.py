"""Passes over evaluation data: masking, predictions, hidden states, Fisher."""
