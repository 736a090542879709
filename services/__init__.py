"""fastcluster.services."""
