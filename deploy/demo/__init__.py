"""The demo: a churn model trained, deployed behind the sidecar, and one prediction traced."""
