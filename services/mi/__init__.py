"""fastcluster.services.mi."""
