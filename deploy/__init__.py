"""Deployment helpers: local broker harness; compose and Kubernetes files."""
