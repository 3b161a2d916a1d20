"""The MLflow bridge: MLflow runs, datasets, registered model versions and aliases as provline events.

:mod:`.mapping` is the pure part (an MLflow REST entity in, provline event fields out, with stable
event ids derived from MLflow ids, so importing twice gives the same events and the sink keeps one);
:mod:`.client` reads a tracking server's REST API and its artifact proxy; :mod:`.importer` runs one
import (``provline mlflow import``) and keeps the state that makes a later import send only what
changed; :mod:`.follow` repeats it (``provline mlflow follow``) with a promotion guard on aliases.
The serve-side join is not written yet (issue 19).
"""
