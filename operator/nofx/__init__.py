"""NOFX: a Kubernetes operator that runs AI-agent Runs as Jobs."""
