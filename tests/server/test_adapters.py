"""LoRA adapters from NIM_PEFT_SOURCE, served by the real engine as model ids of their own.

One server for the module: an adapter present at start, directories it must skip, and adapters
added and removed while it runs (NIM_PEFT_REFRESH_INTERVAL), one of them under a running request.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from nim_server.serving.adapters import scan_adapters
from nim_server.settings import SettingsError, load_settings
from tests.server.conftest import SERVED_NAME, TINY_MAX_MODEL_LEN, chat_body, tiny_server_env
from tests.support.server_process import ServerProcess, ready_server
from tests.support.tiny_adapter import build_lora_adapter

REFRESH_SECONDS = 1
MAX_RANK = 8


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Adapters built once: `alpha` and `beta` usable, `too-big` above the rank limit."""
    built = tmp_path_factory.mktemp("adapters")
    build_lora_adapter(tiny_model_dir, built / "alpha", rank=MAX_RANK, seed=1)
    build_lora_adapter(tiny_model_dir, built / "beta", rank=MAX_RANK, seed=2)
    build_lora_adapter(tiny_model_dir, built / "too-big", rank=2 * MAX_RANK, seed=3)
    return built


@pytest.fixture(scope="module")
def peft_source(adapters: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("peft-source")
    shutil.copytree(adapters / "alpha", source / "alpha")
    shutil.copytree(adapters / "too-big", source / "too-big")
    shutil.copytree(adapters / "alpha", source / "no-config")
    (source / "no-config" / "adapter_config.json").unlink()
    # Passes our checks; only the engine, reading the weights, can refuse it.
    shutil.copytree(adapters / "alpha", source / "broken")
    (source / "broken" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    return source


@pytest.fixture(scope="module")
def lora_server(
    tiny_model_dir: Path, peft_source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("lora-server")
    env = {
        **tiny_server_env(tiny_model_dir, work / "cache"),
        "NIM_PEFT_SOURCE": str(peft_source),
        "NIM_PEFT_REFRESH_INTERVAL": str(REFRESH_SECONDS),
        "NIM_MAX_LORA_RANK": str(MAX_RANK),
        "NIM_MAX_GPU_LORAS": "2",
        "NIM_MAX_CPU_LORAS": "4",
    }
    with ready_server(work, env) as server:
        yield server


@pytest.fixture(scope="module")
def http(lora_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lora_server.base_url, timeout=120) as client:
        yield client


def model_ids(http: httpx.Client) -> list[str]:
    return [card["id"] for card in http.get("/v1/models").json()["data"]]


def answer(http: httpx.Client, model: str) -> str:
    response = http.post("/v1/chat/completions", json=chat_body(model=model, max_tokens=16))
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    return str(response.json()["choices"][0]["message"]["content"])


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_adapters_are_listed_with_the_base_as_parent(
    http: httpx.Client, lora_server: ServerProcess, peft_source: Path
) -> None:
    cards = http.get("/v1/models").json()["data"]
    assert [card["id"] for card in cards] == [SERVED_NAME, "alpha"]
    base, alpha = cards
    assert base["parent"] is None
    assert alpha["parent"] == SERVED_NAME
    assert alpha["root"] == str(peft_source / "alpha")
    assert alpha["max_model_len"] == base["max_model_len"]
    assert http.get("/v1/models/alpha").json() == alpha
    # The unusable directories were skipped, each with one line saying why.
    log = lora_server.log()
    assert re.search(r"LoRA adapter no-config .* skipped: it has no adapter_config.json", log)
    assert re.search(rf"LoRA adapter too-big .* skipped: its rank 16 .*\({MAX_RANK}\)", log)
    assert re.search(r"LoRA adapter broken .* skipped: the engine refused it: .+", log)


def test_the_adapter_changes_the_answer(http: httpx.Client) -> None:
    base = answer(http, SERVED_NAME)
    assert answer(http, "alpha") != base
    assert answer(http, "alpha") == answer(http, "alpha")  # greedy: the same adapter, same text
    completion = http.post(
        "/v1/completions",
        json={"model": "alpha", "prompt": "The capital of France is", "max_tokens": 8},
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["model"] == "alpha"


def test_unknown_models_are_still_404(http: httpx.Client) -> None:
    for model in ("gamma", "too-big", "no-config", "broken"):
        response = http.post("/v1/chat/completions", json=chat_body(model=model))
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "model_not_found"
        assert http.get(f"/v1/models/{model}").status_code == 404


def test_adapters_follow_the_directory_while_running(
    http: httpx.Client, adapters: Path, peft_source: Path
) -> None:
    # Copied under a hidden name, then renamed: the refresh never sees half an adapter.
    shutil.copytree(adapters / "beta", peft_source / ".beta-incoming")
    (peft_source / ".beta-incoming").rename(peft_source / "beta")
    wait_for(lambda: "beta" in model_ids(http))
    assert answer(http, "beta") != answer(http, "alpha")

    shutil.rmtree(peft_source / "beta")
    wait_for(lambda: "beta" not in model_ids(http))
    gone = http.post("/v1/chat/completions", json=chat_body(model="beta"))
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "model_not_found"
    assert model_ids(http) == [SERVED_NAME, "alpha"]


def test_a_removed_adapter_is_unloaded_once_its_running_requests_end(
    http: httpx.Client, lora_server: ServerProcess, adapters: Path, peft_source: Path
) -> None:
    shutil.copytree(adapters / "beta", peft_source / ".delta-incoming")
    (peft_source / ".delta-incoming").rename(peft_source / "delta")
    wait_for(lambda: "delta" in model_ids(http))
    # Four long samples: over ten seconds of engine work here, many refresh intervals.
    long = {"max_tokens": TINY_MAX_MODEL_LEN - 64, "ignore_eos": True, "n": 4}
    body = chat_body(
        model="delta", stream=True, stream_options={"include_usage": True}, temperature=1, **long
    )
    with http.stream("POST", "/v1/chat/completions", json=body) as running:
        assert running.status_code == 200
        lines = running.iter_lines()
        assert next(lines).startswith("data: ")  # the engine is generating for it

        shutil.rmtree(peft_source / "delta")
        wait_for(lambda: "delta" not in model_ids(http))
        for path, request in (
            ("/v1/chat/completions", chat_body(model="delta")),
            ("/v1/responses", {"model": "delta", "input": "Hi", "max_output_tokens": 4}),
        ):
            gone = http.post(path, json=request)
            assert gone.status_code == 404, gone.text
            assert gone.json()["error"]["code"] == "model_not_found"
        assert http.get("/v1/models/delta").status_code == 404
        # Still running on it: the engine keeps the adapter until it ends.
        assert re.search(
            r"LoRA adapter delta \(engine id \d+\) stays loaded until its 1 running request",
            lora_server.log(),
        )
        assert "LoRA adapter delta (engine id" not in unloaded_lines(lora_server)

        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert not [chunk for chunk in chunks if "error" in chunk]
    finishes = [c["finish_reason"] for chunk in chunks for c in chunk["choices"]]
    assert [reason for reason in finishes if reason] == ["length"] * long["n"]
    assert chunks[-1]["usage"]["completion_tokens"] == long["n"] * long["max_tokens"]

    # Then its slot in the engine is released: the engine no longer lists it.
    wait_for(lambda: "LoRA adapter delta" in unloaded_lines(lora_server))
    held = re.search(
        r"LoRA adapter delta \(engine id \d+\) unloaded .*; it holds: (.*)$",
        unloaded_lines(lora_server),
        re.MULTILINE,
    )
    assert held is not None
    assert "delta" not in held.group(1).split(", ")
    assert "alpha" in held.group(1).split(", ")
    assert answer(http, "alpha")  # the engine serves the adapters still listed


def unloaded_lines(server: ServerProcess) -> str:
    return "\n".join(
        line for line in server.log().splitlines() if "unloaded from the engine" in line
    )


def test_a_fixed_adapter_is_served_after_the_next_scan(
    http: httpx.Client, adapters: Path, peft_source: Path
) -> None:
    config = json.loads((adapters / "alpha" / "adapter_config.json").read_text())
    (peft_source / "no-config" / "adapter_config.json").write_text(json.dumps(config))
    wait_for(lambda: "no-config" in model_ids(http))
    assert answer(http, "no-config") == answer(http, "alpha")  # the same weights


def test_a_reloaded_adapter_leaves_its_previous_version_unloaded(
    http: httpx.Client, lora_server: ServerProcess, adapters: Path, peft_source: Path
) -> None:
    before = answer(http, "no-config")  # alpha's weights, since the previous test
    # New weights in one rename, so no scan sees half a file.
    staged = peft_source / ".weights-incoming"
    shutil.copyfile(adapters / "beta" / "adapter_model.safetensors", staged)
    staged.replace(peft_source / "no-config" / "adapter_model.safetensors")
    wait_for(lambda: "reloaded LoRA adapter no-config" in lora_server.log())
    assert answer(http, "no-config") != before

    wait_for(lambda: "LoRA adapter no-config" in unloaded_lines(lora_server))
    held = re.search(
        r"LoRA adapter no-config \(engine id \d+\) unloaded .*; it holds: (.*)$",
        unloaded_lines(lora_server),
        re.MULTILINE,
    )
    assert held is not None
    assert held.group(1).split(", ").count("no-config") == 1  # the new version only


def test_metrics_carry_the_adapter(http: httpx.Client) -> None:
    answer(http, "alpha")
    metrics = http.get("/v1/metrics").text
    ours = re.search(r'^model_requests_total\{model="alpha"\} (\S+)$', metrics, re.MULTILINE)
    assert ours is not None, metrics[-3000:]
    assert float(ours.group(1)) >= 1
    # vLLM's own gauge names the adapters that were running in a step.
    assert re.search(r'^vllm:lora_requests_info\{[^}]*running_lora_adapters="alpha"', metrics, re.M)


def test_responses_are_counted_under_the_adapter_they_name(http: httpx.Client) -> None:
    def counts() -> tuple[float, float]:
        metrics = http.get("/metrics").text
        found = dict(re.findall(r'^model_requests_total\{model="([^"]+)"\} (\S+)$', metrics, re.M))
        return float(found.get("alpha", 0)), float(found.get(SERVED_NAME, 0))

    alpha_before, base_before = counts()
    body = {"model": "alpha", "input": "Hi", "max_output_tokens": 4}
    created = http.post("/v1/responses", json=body)
    assert created.status_code == 200, created.text
    assert created.json()["model"] == "alpha"
    streamed = http.post("/v1/responses", json={**body, "stream": True})
    assert streamed.status_code == 200, streamed.text
    assert counts() == (alpha_before + 2, base_before)


def test_scan_says_why_a_directory_is_skipped(adapters: Path, tmp_path: Path) -> None:
    shutil.copytree(adapters / "alpha", tmp_path / "ok")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "adapter_config.json").write_text("{}")
    shutil.copytree(adapters / "alpha", tmp_path / "bad-json")
    (tmp_path / "bad-json" / "adapter_config.json").write_text("{r: 8")
    shutil.copytree(adapters / "alpha", tmp_path / "no-rank")
    (tmp_path / "no-rank" / "adapter_config.json").write_text('{"r": 0}')
    (tmp_path / "a-file").write_text("")
    found = {a.name: a for a in scan_adapters(tmp_path, max_rank=MAX_RANK)}
    assert sorted(found) == ["bad-json", "no-rank", "no-weights", "ok"]
    assert (found["ok"].rank, found["ok"].problem) == (MAX_RANK, None)
    assert "no weights" in str(found["no-weights"].problem)
    assert "not readable JSON" in str(found["bad-json"].problem)
    assert "no valid rank" in str(found["no-rank"].problem)


def test_lora_settings_mistakes_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        SettingsError, match=r"NIM_PEFT_SOURCE / --peft-source: .*no such directory"
    ):
        load_settings(["--peft-source", str(tmp_path / "missing")])
    with pytest.raises(SettingsError, match=r"NIM_MAX_CPU_LORAS \(2\) must be at least"):
        load_settings(["--max-gpu-loras", "4", "--max-cpu-loras", "2"])
    settings = load_settings(["--peft-source", str(tmp_path), "--peft-refresh-interval", "5"])
    assert (settings.peft_source, settings.peft_refresh_interval) == (tmp_path, 5)
    assert (settings.max_lora_rank, settings.max_gpu_loras, settings.max_cpu_loras) == (32, 8, 16)
