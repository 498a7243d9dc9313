"""Domain exceptions shared by every package.

The HTTP layer maps each class to a status code in exactly one place (service/http/errors.py);
library code raises these and never thinks about HTTP.
"""


class RagserveError(Exception):
    """Base class of every error ragserve raises on purpose."""


class InvalidInputError(RagserveError):
    """The caller sent something unusable (bad corpus line, unknown option, ...)."""


class UnknownReaderError(InvalidInputError):
    """A reader name that is not registered."""


class ReaderUnavailableError(InvalidInputError):
    """A registered reader that this configuration cannot run (the message says what it needs)."""


class UnknownAdapterError(InvalidInputError):
    """An adapter name that this server has not loaded."""


class InvalidAdapterError(InvalidInputError):
    """An adapter folder that is malformed, or does not fit the generator."""


class ArtifactError(RagserveError):
    """An index artifact is missing, incomplete or malformed."""


class IntegrityError(ArtifactError):
    """A file of an artifact does not match the checksum in its manifest."""


class ModelMismatchError(ArtifactError):
    """The artifact was built with another retriever model than the one loaded."""


class ModelNotFoundError(RagserveError):
    """A configured model is neither a known bundled alias nor a local folder."""


class NotReadyError(RagserveError):
    """Models or the index are still loading."""


class UnauthorizedError(RagserveError):
    """No bearer token, or one that matches no configured digest."""


class ForbiddenError(RagserveError):
    """A valid token without the scope the endpoint needs."""


class UnknownVersionError(RagserveError):
    """A well-formed version id that the index does not have."""


class UnknownIndexError(RagserveError):
    """An index name that this server does not serve."""


class UnknownJobError(RagserveError):
    """A job id that does not exist."""


class OverloadedError(RagserveError):
    """The server is at its admission limit (requests in service and queued); retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyJobsError(OverloadedError):
    """The job queue holds its maximum of pending jobs."""


class DrainingError(NotReadyError):
    """The server is shutting down and takes no new work."""


class DeadlineExceededError(RagserveError):
    """The request's deadline passed before its answer was ready."""


class ClientGoneError(RagserveError):
    """The client disconnected; its work was dropped (nobody receives a response)."""


class StorageUnavailableError(RagserveError):
    """The server's storage failed (disk full, I/O error): nothing was acknowledged; retry later."""


class PartialReplicaError(RagserveError):
    """The operation needs every shard of the index, and this replica serves some of them."""


class SupersededError(RagserveError):
    """Another replica changed what serves while this change was being made; it was not applied."""


class ShardUnavailableError(RagserveError):
    """A shard group of the router failed or did not answer in time: no partial answer is given
    (unless the settings allow one), so a result never silently lacks shards."""


class ShardsDisagreeError(RagserveError):
    """The shard groups answered from different index versions, and still did when asked again
    (a roll that outlasts the router's wait): results of different versions are not merged."""
