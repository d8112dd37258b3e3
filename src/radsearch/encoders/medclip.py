"""MedCLIP placeholder."""
