"""The provline event contract: Avro schemas (``avsc/``), serde, topics, keys and hash chains."""

from provline.schemas.errors import CorruptEventError, InvalidEventError, SchemaError, UnknownSchemaError
from provline.schemas.events import Topics, key_for, new_envelope, producer_identity
from provline.schemas.serde import Catalog, Decoded, default_catalog

__all__ = [
    "Catalog", "CorruptEventError", "Decoded", "InvalidEventError", "SchemaError", "Topics",
    "UnknownSchemaError", "default_catalog", "key_for", "new_envelope", "producer_identity",
]
