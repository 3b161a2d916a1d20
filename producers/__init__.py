"""The library ML jobs import to publish lineage events.

    from producers import Lineage
"""

from producers.emitter import Emitter, build_emitter
from producers.lineage import Lineage, Run
from producers.settings import EmitterSettings

__all__ = ["Emitter", "EmitterSettings", "Lineage", "Run", "build_emitter"]
