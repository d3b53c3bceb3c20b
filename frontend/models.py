"""The self-service pages keep no models of their own."""
