"""provline stream processors: the Faust app that joins inference events into prediction traces.

Pure logic lives in :mod:`stream_processors.lineage` and :mod:`stream_processors.join`; the Faust
shell is :mod:`stream_processors.app` (``create_app``, ``run_worker``). Importing this package
connects to nothing.
"""

from stream_processors.settings import ProcessorSettings

__all__ = ["ProcessorSettings"]
