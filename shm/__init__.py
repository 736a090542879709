"""fastcluster.shm."""
