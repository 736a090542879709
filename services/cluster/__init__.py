"""fastcluster.services.cluster."""
