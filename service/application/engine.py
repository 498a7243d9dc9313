"""Question answering = retrieve, then read. Knows only the abstract boundaries (no torch)."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from ragserve.cancel import Cancellation, current_request
from ragserve.errors import InvalidInputError, ReaderUnavailableError, UnknownReaderError
from ragserve.streaming import streaming_to
from ragserve.types import Passage, RetrievalMode, SearchResult
from reader.base import Evidence, Reader, cannot_adapt, cannot_copy
from retriever.base import Retriever
from service.application.adapters import NO_ADAPTER, AdapterManager

if TYPE_CHECKING:
    from reader.adapters import Adapter
    from service.application.edits import EditMatch


@dataclass(frozen=True, slots=True)
class AskResult:
    answer: str
    passages: list[Passage]
    reader: str
    index_version: str
    timings_ms: dict[str, float]
    probability: float | None = None
    weights: list[float | None] = field(default_factory=list)  # per passage, aligned
    evidence: Evidence | None = None  # extractive answers: the passage span it was copied from
    adapter: str | None = None  # the adapter the answer ran with
    edit_id: str | None = None  # the edit the answer came from (its passage is cited first)
    abstained: bool = False  # the passages do not support an answer: `answer` is the refusal text
    support: float | None = None  # p(the passages answer the question), when it was judged


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """How one request is read: the reader, whether the answer is copied, the adapter (None: base)."""

    reader: Reader
    extractive: bool
    adapter: "Adapter | None"


class EditLookup(Protocol):
    def match(self, query: str) -> "EditMatch | None":
        """The edit whose scope the query falls in (service/application/edits.py), or None."""


class SupportJudge(Protocol):
    def probability(self, question: str, passages: Sequence[Passage], mode: RetrievalMode) -> float:
        """Calibrated p(the passages answer the question), from retrieval alone (retriever/support.py)."""


@dataclass(frozen=True, slots=True)
class Abstention:
    """When an answer is refused (from the settings `abstain*` and `refusal_text`)."""

    judge: SupportJudge
    thresholds: Mapping[RetrievalMode, float]  # abstain below this support, per retrieval mode
    default_mode: RetrievalMode  # the mode of requests that name none
    refusal: str
    enabled: bool  # for requests that do not say

    def judged(self, question: str, found: SearchResult, mode: RetrievalMode | None) -> tuple[bool, float]:
        """(abstain?, support) for the passages found."""
        mode = mode or self.default_mode
        support = self.judge.probability(question, found.passages, mode)
        return support < self.thresholds[mode], support


class AskListener(Protocol):
    """Who follows a streamed answer: the passages once they are found, then the answer's text
    piece by piece (the pieces concatenate to the answer). Called on the thread doing the work."""

    def retrieved(self, found: SearchResult) -> None: ...

    def text(self, piece: str) -> None: ...


class _Relay:
    """A listener's text sink that remembers what it passed on, so that the rest of the answer
    (all of it, for readers that do not stream) can be sent once the answer is known."""

    def __init__(self, listener: AskListener) -> None:
        self.listener = listener
        self.sent = ""

    def __call__(self, piece: str) -> None:
        self.sent += piece
        self.listener.text(piece)

    def finish(self, answer: str) -> None:
        if answer.startswith(self.sent) and len(answer) > len(self.sent):
            self(answer[len(self.sent) :])


class QAEngine:
    def __init__(
        self,
        retriever: Retriever,
        readers: Mapping[str, Reader],
        default_reader: str,
        unavailable: Mapping[str, str] | None = None,
        extractive: bool = False,
        adapters: AdapterManager | None = None,
        count_tokens: Callable[[str], int] | None = None,
        edits: EditLookup | None = None,
        abstention: Abstention | None = None,
        edit_answers: str = "edit",
    ) -> None:
        self.edits = edits
        self.abstention = abstention
        self.edit_answers = edit_answers  # "edit": the edit's answer as it is; "reader": read with the edit first
        self.extractive = extractive  # the default when a request does not say
        self.adapters = adapters
        self._count_tokens = count_tokens
        self.unavailable = dict(unavailable or {})  # reader name -> why this configuration cannot run it
        if default_reader not in readers:
            raise self._missing(default_reader, readers)
        self.retriever = retriever
        self.readers = dict(readers)
        self.default_reader = default_reader

    def _missing(self, name: str, readers: Mapping[str, Reader]) -> InvalidInputError:
        if name in self.unavailable:
            return ReaderUnavailableError(f"reader {name!r} is unavailable: {self.unavailable[name]}")
        return UnknownReaderError(f"unknown reader {name!r}; available: {', '.join(sorted(readers))}")

    @property
    def index_version(self) -> str:
        return self.retriever.index_version

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the generator's tokenizer (words where no tokenizer was given)."""
        return self._count_tokens(text) if self._count_tokens is not None else len(text.split())

    def retrieve(self, query: str, top_k: int, mode: RetrievalMode | None = None) -> SearchResult:
        started = time.perf_counter()
        result = self.retriever.search(query, top_k, mode)
        result.timings_ms["total"] = (time.perf_counter() - started) * 1000
        return result

    async def retrieve_async(
        self, query: str, top_k: int, mode: RetrievalMode | None = None, cancellation: Cancellation | None = None
    ) -> SearchResult:
        """`retrieve` for the event loop: awaits a batched search rather than holding a thread."""
        started = time.perf_counter()
        if cancellation is not None:
            cancellation.check()
        result = await self.retriever.search_async(query, top_k, mode)
        result.timings_ms["total"] = (time.perf_counter() - started) * 1000
        return result

    def reader(self, name: str | None) -> Reader:
        name = name or self.default_reader
        if name not in self.readers:
            raise self._missing(name, self.readers)
        return self.readers[name]

    def ask(
        self,
        question: str,
        top_k: int,
        reader_name: str | None = None,
        mode: RetrievalMode | None = None,
        extractive: bool | None = None,
        adapter_name: str | None = None,
        cancellation: Cancellation | None = None,
        listener: AskListener | None = None,
        retrieval_query: str | None = None,
        abstain: bool | None = None,
        use_edits: bool = True,
    ) -> AskResult:
        """An answer from the top_k passages. `extractive` and `adapter_name` None mean the server's
        defaults, which readers that cannot copy answers or run adapters answer without; asking
        such a reader for either explicitly is an error. Once `cancellation` is set (deadline,
        client gone) the work stops at the next stage or decoding step with its error. A
        `listener` follows the answer as it is made (a streamed answer); `retrieval_query`, when
        given, is what is searched for instead of the question (a chat's earlier turns).

        A question in the scope of an edit is answered from it (`use_edits`); any other is
        answered from the passages, or refused when they do not support an answer (`abstain`;
        None: the server's default)."""
        started = time.perf_counter()
        plan = self.plan(reader_name, extractive, adapter_name)  # fail fast, before any work
        relay = _Relay(listener) if listener is not None else None
        with current_request(cancellation), streaming_to(relay):
            looked = time.perf_counter()
            matched = self.edits.match(question) if self.edits is not None and use_edits else None
            looked_ms = (time.perf_counter() - looked) * 1000
            found = self.retriever.search(retrieval_query or question, top_k, mode)
            if self.edits is not None and use_edits:
                found.timings_ms["edits"] = looked_ms
            if matched is not None:
                found = replace(found, passages=[matched.passage(), *found.passages[: max(0, top_k - 1)]])
            if listener is not None:
                listener.retrieved(found)
            if cancellation is not None:
                cancellation.check()  # before the prefill, the expensive part
            result = self._answer(question, plan, found, started, matched, abstain, mode)
        if relay is not None:
            relay.finish(result.answer)
        return result

    def _answer(
        self,
        question: str,
        plan: ReadPlan,
        found: SearchResult,
        started: float,
        matched: "EditMatch | None",
        abstain: bool | None,
        mode: RetrievalMode | None,
    ) -> AskResult:
        if matched is not None:
            if self.edit_answers == "edit":  # the counterfactual answer is the edit's own
                return self._result(matched.edit.answer, found, plan, started, edit_id=matched.edit.id)
            return replace(self.read(question, found.passages, plan, found, started), edit_id=matched.edit.id)
        policy = self.abstention
        if policy is not None and (policy.enabled if abstain is None else abstain):
            refused, support = policy.judged(question, found, mode)
            if refused:
                return self._result(policy.refusal, found, plan, started, abstained=True, support=support)
            return replace(self.read(question, found.passages, plan, found, started), support=support)
        return self.read(question, found.passages, plan, found, started)

    def _result(
        self,
        answer: str,
        found: SearchResult,
        plan: ReadPlan,
        started: float,
        edit_id: str | None = None,
        abstained: bool = False,
        support: float | None = None,
    ) -> AskResult:
        """An answer that no reader made (an edit's, a refusal), citing the passages found."""
        timings = {**found.timings_ms, "total": (time.perf_counter() - started) * 1000}
        weights: list[float | None] = [None] * len(found.passages)
        return AskResult(
            answer,
            found.passages,
            plan.reader.name,
            found.index_version,
            timings,
            weights=weights,
            edit_id=edit_id,
            abstained=abstained,
            support=support,
        )

    def plan(self, reader_name: str | None, extractive: bool | None, adapter_name: str | None) -> ReadPlan:
        """The reader, answer mode and adapter a request gets (see `ask`), checked."""
        reader = self.reader(reader_name)
        if extractive and not reader.extractive:
            raise cannot_copy(reader.name)
        copy = (self.extractive and reader.extractive) if extractive is None else extractive
        named = adapter_name not in (None, NO_ADAPTER)
        if named and not reader.adapts:
            raise cannot_adapt(reader.name)
        if named and self.adapters is None:
            raise InvalidInputError("this server runs no adapters")
        adapter = self.adapters.resolve(adapter_name) if self.adapters is not None and reader.adapts else None
        return ReadPlan(reader, copy, adapter)

    def read(
        self, question: str, passages: list[Passage], plan: ReadPlan, found: SearchResult, started: float
    ) -> AskResult:
        """The answer `plan` gives from `passages` (those `found`, or others: evaluation's gold
        ones); timings are counted from `started` (a perf_counter reading)."""
        reader, adapter = plan.reader, plan.adapter
        if plan.extractive:
            answer = reader.answer_extractive(question, passages, adapter)
        else:
            answer = reader.answer(question, passages, adapter)
        timings = {**found.timings_ms, **answer.timings_ms, "total": (time.perf_counter() - started) * 1000}
        weights: list[float | None] = list(answer.weights) if answer.weights else [None] * len(answer.passages)
        return AskResult(
            answer.text,
            answer.passages,
            reader.name,
            found.index_version,
            timings,
            answer.probability,
            weights,
            answer.evidence,
            adapter.name if adapter is not None else None,
        )
