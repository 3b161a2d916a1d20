"""provline stream processors: the Faust app that joins inference events into prediction traces.

Pure logic lives in :mod:`provline.stream_processors.lineage` and :mod:`provline.stream_processors.join`; the Faust
shell is :mod:`provline.stream_processors.app` (``create_app``, ``run_worker``). Importing this package
connects to nothing.
"""

from provline.stream_processors.settings import ProcessorSettings

__all__ = ["ProcessorSettings"]
