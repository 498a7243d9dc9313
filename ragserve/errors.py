"""Domain exceptions shared by every package.

Each class carries the `code` of the JSON error body (`{"error": {"code", "message"}}`), defined
here once: the HTTP layer maps each class to a status code in exactly one place
(service/http/errors.py) and reads the code from the class, and the Python client
(ragserve/client) turns a code back into its class (`error_classes`). Library code raises these
and never thinks about HTTP.
"""


class RagserveError(Exception):
    """Base class of every error ragserve raises on purpose."""

    code: str = "internal_error"  # an instance may carry another: the generic error of a client


class InvalidInputError(RagserveError):
    """The caller sent something unusable (bad corpus line, unknown option, ...)."""

    code = "invalid_input"


class InvalidRequestError(InvalidInputError):
    """A request body that does not fit its schema (a missing field, a limit exceeded): what the
    HTTP layer answers for the validation errors of its request models."""

    code = "invalid_request"


class UnknownReaderError(InvalidInputError):
    """A reader name that is not registered."""

    code = "unknown_reader"


class ReaderUnavailableError(InvalidInputError):
    """A registered reader that this configuration cannot run (the message says what it needs)."""

    code = "reader_unavailable"


class UnknownAdapterError(InvalidInputError):
    """An adapter name that this server has not loaded."""

    code = "unknown_adapter"


class InvalidAdapterError(InvalidInputError):
    """An adapter folder that is malformed, or does not fit the generator."""

    code = "adapter_invalid"


class ArtifactError(RagserveError):
    """An index artifact is missing, incomplete or malformed."""

    code = "artifact_invalid"


class IntegrityError(ArtifactError):
    """A file of an artifact does not match the checksum in its manifest."""


class ModelMismatchError(ArtifactError):
    """The artifact was built with another retriever model than the one loaded."""


class ModelNotFoundError(RagserveError):
    """A configured model is neither a known bundled alias nor a local folder."""

    code = "model_unavailable"


class NotReadyError(RagserveError):
    """Models or the index are still loading."""

    code = "not_ready"


class UnauthorizedError(RagserveError):
    """No bearer token, or one that matches no configured digest."""

    code = "unauthorized"


class ForbiddenError(RagserveError):
    """A valid token without the scope the endpoint needs."""

    code = "forbidden"


class UnknownVersionError(RagserveError):
    """A well-formed version id that the index does not have."""

    code = "unknown_version"


class UnknownIndexError(RagserveError):
    """An index name that this server does not serve."""

    code = "unknown_index"


class UnknownJobError(RagserveError):
    """A job id that does not exist."""

    code = "unknown_job"


class UnknownEditError(RagserveError):
    """An edit id that does not exist (or, to delete, is deleted already)."""

    code = "unknown_edit"


class TooManyEditsError(RagserveError):
    """The edit memory holds its maximum of live edits (setting `max_edits`)."""

    code = "too_many_edits"


class OverloadedError(RagserveError):
    """The server is at its admission limit (requests in service and queued); retry later."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyJobsError(OverloadedError):
    """The job queue holds its maximum of pending jobs."""

    code = "too_many_jobs"


class DrainingError(NotReadyError):
    """The server is shutting down and takes no new work."""

    code = "draining"


class DeadlineExceededError(RagserveError):
    """The request's deadline passed before its answer was ready."""

    code = "deadline_exceeded"


class ClientGoneError(RagserveError):
    """The client disconnected; its work was dropped (nobody receives a response)."""

    code = "client_disconnected"


class StorageUnavailableError(RagserveError):
    """The server's storage failed (disk full, I/O error): nothing was acknowledged; retry later."""

    code = "storage_unavailable"


class PartialReplicaError(RagserveError):
    """The operation needs every shard of the index, and this replica serves some of them."""

    code = "partial_replica"


class SupersededError(RagserveError):
    """Another replica changed what serves while this change was being made; it was not applied."""

    code = "superseded"


class ShardUnavailableError(RagserveError):
    """A shard group of the router failed or did not answer in time: no partial answer is given
    (unless the settings allow one), so a result never silently lacks shards."""

    code = "shard_unavailable"


class ShardsDisagreeError(RagserveError):
    """The shard groups answered from different index versions, and still did when asked again
    (a roll that outlasts the router's wait): results of different versions are not merged."""

    code = "shards_disagree"


def error_classes() -> dict[str, type[RagserveError]]:
    """Every error code and the class that defines it (in its own body: IntegrityError, which
    defines none, answers with its parent's code, and is not listed)."""
    found: dict[str, type[RagserveError]] = {}
    todo: list[type[RagserveError]] = [RagserveError]
    while todo:
        cls = todo.pop()
        if "code" in vars(cls):
            assert cls.code not in found, f"error code {cls.code!r} is defined by {found[cls.code]} and {cls}"
            found[cls.code] = cls
        todo.extend(cls.__subclasses__())
    return found
