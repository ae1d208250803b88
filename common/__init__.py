"""Small shared utilities used by every package: typed configs and safe file writes."""
