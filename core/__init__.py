"""fastcluster.core."""
