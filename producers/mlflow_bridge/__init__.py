"""The MLflow bridge: MLflow runs, datasets, registered model versions and aliases as provline events.

:mod:`.mapping` is the pure part (an MLflow REST entity in, provline event fields out, with stable
event ids derived from MLflow ids, so importing twice gives the same events and the sink keeps one).
The REST shell and the ``provline mlflow`` commands are not written yet (issue 19).
"""
