"""fastcluster.workers."""
