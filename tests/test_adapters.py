"""Reader adapters: trained with peft for a few steps on tiny data, saved, served by ragserve's own
per-row path (reader/adapters.py) and compared with peft's forward pass; resume, mixed batches,
bad folders, and the admin API swapping adapters while requests run."""

import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from ragserve.errors import InvalidAdapterError, InvalidInputError, UnknownAdapterError
from ragserve.types import Passage
from reader.adapter_train import CHECKPOINT, Example, batches, train
from reader.adapters import Adapter, load_adapter
from reader.generator import Generator
from reader.prompt import ADAPTER_PREFIX, PREFIX, qa_suffix
from reader.train_config import AdapterTrainConfig
from service.application.adapters import AUTO, BUNDLED_DEFAULT, AdapterManager, bundled_adapters
from tests.conftest import TINY_CORPUS
from tests.defaults import SETTINGS

PASSAGES = {d.id: Passage(f"{d.id}#0", d.id, d.title, d.text, 1.0, 0, len(d.text)) for d in TINY_CORPUS}
EXAMPLES = [
    Example("q1", "Who is the mayor of Quenmoor?", "Ilse Varga", [PASSAGES["quenmoor"]]),
    Example("q2", "Who built the Harrow bridge?", "Tomas Brell", [PASSAGES["bridge"]]),
    Example("q3", "Where is the Zorblat festival held?", "Quenmoor", [PASSAGES["festival"]]),
    Example("q4", "How long is Velt cheese ripened?", "nine months", [PASSAGES["ferment"]]),
]
# Learning rates far above the defaults, so that two steps move every method's outputs visibly.
CONFIGS = {
    "lora": AdapterTrainConfig(
        max_passage_tokens=SETTINGS.max_passage_tokens,
        method="lora",
        rank=4,
        alpha=8,
        lr=2e-2,
        batch=2,
        holdout=0,
        checkpoint_every=1,
    ),
    "ia3": AdapterTrainConfig(
        max_passage_tokens=SETTINGS.max_passage_tokens, method="ia3", lr=0.2, batch=2, holdout=0, checkpoint_every=1
    ),
    "prompt": AdapterTrainConfig(
        max_passage_tokens=SETTINGS.max_passage_tokens,
        method="prompt",
        virtual_tokens=4,
        lr=0.3,
        batch=2,
        holdout=0,
        checkpoint_every=1,
    ),
}


def fresh_generator(cache_home: Path) -> Generator:
    """Training changes the model it is given: each run gets a generator of its own."""
    return Generator(SETTINGS.generator_model, cache_home, "fp32")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_home: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    for method, config in CONFIGS.items():
        report = train(fresh_generator(cache_home), EXAMPLES, root / method, config, progress_bar=False)
        assert report is not None and report["steps"] == 2 and report["method"] == method
    return {method: root / method for method in CONFIGS}


def peft_reference(generator: Generator, folder: Path, ids: list[int]) -> torch.Tensor:
    """(T, V) log-probabilities of peft's own forward pass over `ids` with the saved adapter."""
    base = AutoModelForCausalLM.from_pretrained(generator.path, local_files_only=True, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]  # (T, V); prompt tuning drops its virtual rows
    return torch.log_softmax(logits.float(), dim=-1)[-len(ids) :]


def served(generator: Generator, adapter: Adapter | None, suffix: list[int], answer: list[int]) -> torch.Tensor:
    """(1 + A, V) log-probabilities after the prompt and after each answer token, through reader/lm.py."""
    prefix = generator.text.encode(ADAPTER_PREFIX if adapter is not None else PREFIX)
    with torch.inference_mode():
        batch = generator.lm.start(prefix, [suffix], adapter)
        _, after = generator.lm.extend(batch, torch.tensor([answer]))
    return torch.cat([batch.logprobs, after[0]])


@pytest.mark.parametrize("method", list(CONFIGS))
def test_a_saved_adapter_serves_exactly_what_peft_computes(
    generator: Generator, trained: dict[str, Path], method: str
) -> None:
    adapter = generator.load_adapter(trained[method], f"t-{method}")
    assert adapter.method == method and adapter.prefix == ADAPTER_PREFIX
    suffix = generator.text.encode(qa_suffix("Who is the mayor of Quenmoor?", [PASSAGES["quenmoor"]]))
    answer = generator.text.encode(" Ilse Varga\n")
    ours = served(generator, adapter, suffix, answer)  # (1 + A, V)
    prompt = [*generator.text.encode(ADAPTER_PREFIX), *suffix, *answer]
    reference = peft_reference(generator, trained[method], prompt)[-len(answer) - 1 :]  # (1 + A, V)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=0)
    # and the adapter does change the model: the base model with the same prompt differs
    with torch.inference_mode():
        plain = generator.lm.start(generator.text.encode(ADAPTER_PREFIX), [suffix]).logprobs[0]
    assert (plain - ours[0]).abs().max() > 1e-3


def test_rows_of_one_batch_each_run_their_own_adapter(generator: Generator, trained: dict[str, Path]) -> None:
    adapters: list[Adapter | None] = [generator.load_adapter(trained[m], f"m-{m}") for m in CONFIGS] + [None]
    suffixes = [
        generator.text.encode(qa_suffix(q, [PASSAGES[d]]))
        for q, d in [("Who built the bridge?", "bridge"), ("Who is mayor?", "quenmoor"), ("Cheese?", "ferment")]
    ] + [generator.text.encode(qa_suffix("When is the festival?", [PASSAGES["festival"]]))]
    lm = generator.lm
    with torch.inference_mode():
        lone = [
            lm.start(generator.text.encode(ADAPTER_PREFIX), [s], a) for s, a in zip(suffixes, adapters, strict=True)
        ]
        merged = lone[0]
        for part in lone[1:]:
            merged = lm.merge(merged, part)  # type: ignore[attr-defined]
        assert merged.adapters == tuple(adapters)
        tokens = torch.tensor([101, 202, 303, 404])
        stepped = lm.step(merged, tokens)
        picked = lm.select(stepped, torch.tensor([2, 0]))
        for row, (batch, token) in enumerate(zip(lone, tokens, strict=True)):
            alone = lm.step(batch, token[None])
            torch.testing.assert_close(stepped.logprobs[row], alone.logprobs[0], atol=2e-4, rtol=0)
        assert picked.adapters == (adapters[2], adapters[0])


def test_an_interrupted_run_resumes_to_the_same_adapter(
    tmp_path: Path, cache_home: Path, trained: dict[str, Path]
) -> None:
    out = tmp_path / "lora"
    assert train(fresh_generator(cache_home), EXAMPLES, out, CONFIGS["lora"], False, stop_after=1) is None
    assert (out / CHECKPOINT / "trainer.json").is_file() and not (out / "ragserve.json").exists()
    report = train(fresh_generator(cache_home), EXAMPLES, out, CONFIGS["lora"], False)
    assert report is not None and report["steps"] == 2
    assert not (out / CHECKPOINT).exists()
    resumed, whole = (
        load_file(out / "adapter_model.safetensors"),
        load_file(trained["lora"] / "adapter_model.safetensors"),
    )
    assert resumed.keys() == whole.keys()
    for key, tensor in whole.items():
        torch.testing.assert_close(resumed[key], tensor, atol=1e-6, rtol=0)


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path, cache_home: Path) -> None:
    out = tmp_path / "lora"
    train(fresh_generator(cache_home), EXAMPLES, out, CONFIGS["lora"], False, stop_after=1)
    other = replace(CONFIGS["lora"], lr=1e-2)  # the same run but for its learning rate
    with pytest.raises(InvalidInputError, match="another run"):
        train(fresh_generator(cache_home), EXAMPLES, out, other, False)


def test_training_settings_are_range_checked() -> None:
    with pytest.raises(InvalidInputError, match="method"):
        AdapterTrainConfig(max_passage_tokens=SETTINGS.max_passage_tokens, method="dora")
    with pytest.raises(InvalidInputError, match="batch"):
        AdapterTrainConfig(max_passage_tokens=SETTINGS.max_passage_tokens, batch=0)


def test_batches_cover_each_epoch_once_and_are_deterministic() -> None:
    lengths = [5, 50, 7, 30, 9, 11, 60, 2, 8, 40]
    steps = batches(lengths, batch=3, epochs=2, seed=1)
    assert steps == batches(lengths, batch=3, epochs=2, seed=1)
    assert len(steps) == 7  # ceil(10 * 2 / 3)
    first_epoch = [i for step in steps[:4] for i in step]
    assert sorted(first_epoch) == list(range(10))


def broken_copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "broken"
    shutil.copytree(source, target)
    return target


def test_bad_adapter_folders_are_refused_with_reasons(
    generator: Generator, trained: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(InvalidAdapterError, match="not an adapter folder"):
        load_adapter(tmp_path, "x", generator.model)
    folder = broken_copy(trained["lora"], tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LOHA"}))
    with pytest.raises(InvalidAdapterError, match="LOHA"):
        load_adapter(folder, "x", generator.model)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(InvalidAdapterError, match="use_dora"):
        load_adapter(folder, "x", generator.model)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(folder / "adapter_model.safetensors")
    renamed = {k.replace("layers.0.", "layers.99."): v for k, v in tensors.items()}
    save_file(renamed, folder / "adapter_model.safetensors")
    with pytest.raises(InvalidAdapterError, match="no linear layer"):
        load_adapter(folder, "x", generator.model)
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(InvalidAdapterError, match="trained on generator"):
        load_adapter(folder, "x", generator.model, base_id="another-model:0000")
    (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": "sixteen"}))
    with pytest.raises(InvalidAdapterError, match="bad adapter option"):
        load_adapter(folder, "x", generator.model)
    (folder / "adapter_config.json").write_text("[]")
    with pytest.raises(InvalidAdapterError, match="expected a JSON object"):
        load_adapter(folder, "x", generator.model)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(InvalidAdapterError, match="unreadable adapter"):
        load_adapter(folder, "x", generator.model)


def test_the_manager_loads_replaces_and_unloads(generator: Generator, trained: dict[str, Path], tmp_path: Path) -> None:
    manager = AdapterManager(tmp_path / "adapters", generator.load_adapter, default="none")
    assert manager.default is None and manager.resolve(None) is None and manager.resolve("none") is None
    info, replaced = manager.load("qa", trained["lora"])
    assert (info.method, info.source, replaced) == ("lora", "directory", False)
    assert (tmp_path / "adapters" / "qa" / "adapter_config.json").is_file()  # copied in: there after a restart
    first = manager.resolve("qa")
    _, replaced = manager.load("qa", trained["ia3"])
    assert replaced and manager.resolve("qa") is not first and manager.resolve("qa").method == "ia3"  # type: ignore[union-attr]
    with pytest.raises(UnknownAdapterError):
        manager.resolve("nope")
    manager.set_default("qa")
    with pytest.raises(InvalidInputError, match="default"):
        manager.unload("qa")
    manager.set_default("none")
    manager.unload("qa")
    assert "qa" not in manager.names() and not (tmp_path / "adapters" / "qa").exists()
    restarted = AdapterManager(tmp_path / "adapters", generator.load_adapter, default="none")
    assert "qa" not in restarted.names()
    with pytest.raises(InvalidAdapterError, match="cannot be served"):
        AdapterManager(tmp_path / "adapters", generator.load_adapter, default="missing")


def test_auto_serves_the_bundled_adapter_when_it_fits(generator: Generator, tmp_path: Path) -> None:
    manager = AdapterManager(tmp_path, generator.load_adapter, default=AUTO)
    assert manager.names() == sorted(bundled_adapters()) and not manager.skipped  # every shipped one fits
    if BUNDLED_DEFAULT in bundled_adapters():
        assert manager.default == BUNDLED_DEFAULT and BUNDLED_DEFAULT in manager.names()
    else:
        assert manager.default is None


# --- over HTTP ----------------------------------------------------------------------------------------


def ask(client: TestClient, **body: object) -> dict[str, object]:
    response = client.post("/v1/ask", json={"question": "Who built the Harrow bridge?", **body})
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def test_requests_choose_adapters_and_bad_names_are_422s(client: TestClient, trained: dict[str, Path]) -> None:
    loaded = client.post("/admin/adapters/api-lora", json={"path": str(trained["lora"])})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["adapter"]["method"] == "lora" and loaded.json()["replaced"] is False
    assert "api-lora" in client.get("/readyz").json()["adapters"]
    assert ask(client, adapter="api-lora")["adapter"] == "api-lora"
    assert ask(client)["adapter"] is None  # these tests' server has no default adapter
    assert ask(client, adapter="api-lora", reader="rag-token", top_k=2)["adapter"] == "api-lora"
    assert ask(client, adapter="api-lora", extractive=True)["evidence"] is not None
    for body, code in [
        ({"adapter": "missing"}, "unknown_adapter"),
        ({"adapter": "Bad Name!"}, "invalid_request"),
        ({"adapter": "api-lora", "reader": "fusion"}, "reader_unavailable"),
    ]:
        response = client.post("/v1/ask", json={"question": "q", **body})
        assert response.status_code == 422 and response.json()["error"]["code"] == code, response.text
    bad = client.post("/admin/adapters/oops", json={"path": "/nonexistent"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "adapter_invalid"
    assert client.post("/admin/adapters/missing").status_code == 422
    changed = client.put("/admin/default-adapter", json={"name": "api-lora"}).json()
    assert changed == {"default": "api-lora", "previous": None}
    assert ask(client)["adapter"] == "api-lora"
    assert ask(client, adapter="none")["adapter"] is None
    assert ask(client, reader="fusion")["adapter"] is None  # a default adapter never fails a reader that has none
    assert client.delete("/admin/adapters/api-lora").status_code == 422  # the default
    client.put("/admin/default-adapter", json={"name": "none"})
    assert client.delete("/admin/adapters/api-lora").status_code == 200
    assert client.get("/admin/adapters").json()["default"] is None


def test_an_adapter_swapped_while_requests_run_answers_with_one_or_the_other(
    client: TestClient, trained: dict[str, Path]
) -> None:
    folders = [trained["lora"], trained["prompt"]]
    expected = set()
    for folder in folders:
        assert client.post("/admin/adapters/swap", json={"path": str(folder)}).status_code == 200
        expected.add(ask(client, adapter="swap")["answer"])
    answers: list[object] = []
    failures: list[str] = []

    def asking() -> None:
        for _ in range(4):
            response = client.post("/v1/ask", json={"question": "Who built the Harrow bridge?", "adapter": "swap"})
            if response.status_code != 200:
                failures.append(response.text)
            else:
                answers.append(response.json()["answer"])

    threads = [threading.Thread(target=asking) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(6):
        swapped = client.post("/admin/adapters/swap", json={"path": str(folders[i % 2])})
        assert swapped.status_code == 200 and swapped.json()["replaced"]
    for t in threads:
        t.join()
    assert not failures and len(answers) == 12
    assert set(answers) <= expected
    client.delete("/admin/adapters/swap")


def test_train_reader_command_retrieves_passages_and_writes_an_adapter(
    tmp_path: Path, tiny_index: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import main

    data = tmp_path / "qa.jsonl"
    lines = [{"id": ex.id, "question": ex.question, "answers": [ex.answer]} for ex in EXAMPLES]
    data.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    monkeypatch.setenv("RAGSERVE_HOME", str(cache_home))
    monkeypatch.setenv("RAGSERVE_REGISTRY_DIR", str(tmp_path / "registry"))
    out = tmp_path / "adapter"
    argv = ["train", "reader", "--data", str(data), "--index", str(tiny_index), "--out", str(out)]
    assert main([*argv, "--method", "ia3", "--batch", "2", "--holdout", "0", "--no-progress"]) == 0
    info = json.loads((out / "ragserve.json").read_text())
    assert info["training"]["examples"] == 4 and info["training"]["steps"] == 2
    assert info["prefix"] == ADAPTER_PREFIX and info["base_id"]
    assert main([*argv, "--method", "ia3"]) == 2  # a finished adapter is not overwritten


def test_qa_files_are_read_with_clear_errors(tmp_path: Path) -> None:
    from service.application.training import QA, choose, read_qa

    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"question": "Q1?", "answer": "A1", "title": "T1"}\n\n'
        '{"id": "x", "question": "Q2?", "answers": {"text": ["A2", "a2"]}, "title": "T2"}\n'
    )
    qas = list(read_qa(good))
    assert [(q.question, q.answer, q.article) for q in qas] == [("Q1?", "A1", "T1"), ("Q2?", "A2", "T2")]
    assert [q.question for q in choose(qas, "train", None)] == ["Q1?"]
    for text, message in [
        ('{"question": "Q?"}\n', "answer"),
        ('{"answer": "A"}\n', "question"),
        ("not json\n", "invalid JSON"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(InvalidInputError, match=message):
            list(read_qa(bad))
    with pytest.raises(InvalidInputError, match="title"):
        choose([QA("i", "q", "a", None)], "train", None)


def test_server_defaults_apply_only_to_readers_that_can_use_them(client: TestClient) -> None:
    engine = client.app.state.ragserve.services.engine  # type: ignore[attr-defined]
    engine.extractive = True  # as RAGSERVE_EXTRACTIVE=true would
    try:
        assert ask(client)["evidence"] is not None  # stuff copies its answer
        assert ask(client, reader="rag-token")["evidence"] is None  # rag-token cannot: the default skips it
        explicit = client.post("/v1/ask", json={"question": "q", "reader": "rag-token", "extractive": True})
        assert explicit.status_code == 422
    finally:
        engine.extractive = False


@pytest.mark.parametrize("name", sorted(bundled_adapters()))
def test_every_bundled_adapter_answers_from_the_passage(client: TestClient, name: str) -> None:
    answer = ask(client, adapter=name)
    assert answer["adapter"] == name
    assert "Tomas Brell" in str(answer["answer"])
