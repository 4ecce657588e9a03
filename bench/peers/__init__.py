"""Peer servers for comparison: the same model and preprocessing behind other serving styles."""
