"""The library ML jobs import to publish lineage events.

    from provline.producers import Lineage
"""

from provline.producers.emitter import Emitter, build_emitter
from provline.producers.lineage import Lineage, Run
from provline.producers.settings import EmitterSettings, JobSettings
from provline.producers.transports import MemoryTransport

__all__ = ["Emitter", "EmitterSettings", "JobSettings", "Lineage", "MemoryTransport", "Run", "build_emitter"]
