"""Third-party model servers (MLServer, MLflow) in virtual environments of their own, the training job
whose models they serve, and the stack that puts provline in front of them (see :mod:`.servers`)."""

from deploy.local.model_servers.servers import RealServersStack, Server, TrainingRun, venv_tool

__all__ = ["RealServersStack", "Server", "TrainingRun", "venv_tool"]
