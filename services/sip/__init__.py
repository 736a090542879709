"""fastcluster.services.sip."""
