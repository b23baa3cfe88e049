"""Errors a user of fstore can act on: each names the thing that is wrong."""


class FstoreError(Exception):
    """Base of every error fstore raises on purpose."""


class SchemaError(FstoreError):
    """An entity schema breaks one of fstore's rules."""


class UnknownEntityError(FstoreError, LookupError):
    def __init__(self, entity: str, known: list[str]) -> None:
        super().__init__(f"unknown entity {entity!r}; known entities: {', '.join(known) or 'none'}")
        self.entity = entity


class UnknownVersionError(FstoreError, LookupError):
    def __init__(self, entity: str, version: int, known: list[int]) -> None:
        super().__init__(
            f"unknown version {version} of entity {entity!r}; known versions: {', '.join(map(str, known))}"
        )
        self.entity = entity
        self.version = version


class UnknownFeatureError(FstoreError, LookupError):
    def __init__(self, entity: str, version: int, feature: str, known: list[str]) -> None:
        super().__init__(
            f"unknown feature {feature!r} of entity {entity!r} v{version}; known features: {', '.join(known)}"
        )
        self.entity = entity
        self.feature = feature


class InvalidIdError(FstoreError, ValueError):
    """An entity id of the wrong type (e.g. a string for an int64 key)."""


class SettingsError(FstoreError):
    """A setting is missing or malformed; the message names the key."""


class StoreUnavailableError(FstoreError):
    """A backing store (Redis, BigQuery, ...) cannot be reached; nothing was read or written wrongly."""


class DamagedFileError(FstoreError):
    """A file of the offline store cannot be read (truncated, overwritten); the message names it."""
