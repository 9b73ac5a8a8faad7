"""The engine interface serving code depends on, and its adapter over vLLM's AsyncLLM.

The engine loads in the background after the HTTP port is up: the lifecycle (`state`, `reason`)
is part of the interface so health checks and request handlers can answer honestly while the
model loads, after it fails to load, and after the engine process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nim_server.engine_args import executor_backend, passthrough_overrides
from nim_server.lora_slots import LoraSlots
from nim_server.model_source import ResolvedModel, resolve_model
from nim_server.settings import Settings, default_cache_path

if TYPE_CHECKING:
    from vllm import RequestOutput, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.tokenizers import TokenizerLike
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

# vLLM on CPU reserves most of RAM for the KV cache unless told otherwise.
DEFAULT_CPU_KV_CACHE_BYTES = 512 * 1024 * 1024


class EngineState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"  # never became ready
    DEAD = "dead"  # was ready, then the engine process died
    STOPPED = "stopped"


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter as the engine knows it."""

    name: str  # its model id, also its label in the engine's metrics
    path: str
    rank: int
    # Unique per load: an adapter changed on disk is loaded under a new id, so the engine
    # never answers with weights it cached for the old files.
    engine_id: int


@dataclass(frozen=True)
class ServedModel:
    name: str  # the id clients send as `model`
    root: str  # what the engine loaded
    source: str  # what was configured
    max_model_len: int
    vocab_size: int
    max_num_seqs: int
    created: int
    parent: str | None = None  # a LoRA adapter's base model id
    lora: LoraAdapter | None = None  # what generate() applies for this model id


@dataclass(frozen=True)
class EnginePrompt:
    token_ids: list[int]
    engine_input: Any  # the engine's own form of the prompt, handed back to generate()


class EngineRequestError(Exception):
    """The engine rejected a request because of what the request asked for (a 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AdapterRemoved(EngineRequestError):
    """The LoRA adapter a request named was removed before the request reached the engine."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")
        self.model = model


class EngineFailure(Exception):
    """The engine could not finish a request, through no fault of the request (a 500)."""


class EngineDead(EngineFailure):
    """The engine stopped working; no request can be served by this process any more."""


class InferenceEngine(ABC):
    """An inference engine with a load lifecycle, as the serving layer sees it."""

    state: EngineState = EngineState.LOADING
    reason: str = "the model is loading"

    @property
    @abstractmethod
    def model(self) -> ServedModel:
        """The served model; only valid once the engine is ready."""

    @abstractmethod
    async def start(self) -> None:
        """Load the model; sets `state` to READY or FAILED (never raises)."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def wait_loaded(self) -> EngineState:
        """Wait until loading has finished, successfully or not."""

    @abstractmethod
    def check_health(self) -> EngineState:
        """Re-check the engine and return the (possibly updated) state."""

    @abstractmethod
    async def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        template_kwargs: dict[str, Any],
    ) -> EnginePrompt:
        """Apply the model's chat template and tokenize."""

    @abstractmethod
    async def render_text(self, prompt: str | list[int]) -> EnginePrompt:
        """Tokenize a completion prompt (token ids pass through)."""

    @abstractmethod
    def generate(
        self,
        prompt: EnginePrompt,
        params: SamplingParams,
        request_id: str,
        lora: LoraAdapter | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream outputs; closing the iterator early aborts the request in the engine."""

    @property
    def adapters(self) -> Mapping[str, ServedModel]:
        """The LoRA adapters served on top of the model, by model id."""
        return {}

    async def add_adapter(self, name: str, path: str, rank: int) -> ServedModel:
        """Load (or reload) a LoRA adapter and serve it as model id `name`.

        Raises EngineRequestError when the engine rejects the adapter.
        """
        raise EngineRequestError("this engine does not serve LoRA adapters")

    def remove_adapter(self, name: str) -> None:
        """Stop serving the adapter `name`; it is unloaded once the requests running on it end."""
        raise EngineRequestError("this engine does not serve LoRA adapters")

    def tokenizer(self) -> Any:
        """The engine's tokenizer, for vLLM's tool-call parsers (auto tool choice)."""
        raise EngineFailure("this engine has no tokenizer for tool-call parsers")

    @abstractmethod
    def decode(self, token_ids: Sequence[int]) -> str: ...

    @abstractmethod
    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """The text of each token id on its own (for logprobs)."""


class VllmEngine(InferenceEngine):
    """vLLM's AsyncLLM in this process (its EngineCore runs in a child process)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._llm: AsyncLLM | None = None
        self._model: ServedModel | None = None
        self.state = EngineState.LOADING
        self.reason = "the model is loading"
        self._loaded = asyncio.Event()
        self._chat_template = settings.chat_template_text()
        self._adapters: dict[str, ServedModel] = {}
        self._adapter_ids = itertools.count(1)  # vLLM's LoRA ids start at 1
        self._lora_slots = LoraSlots(self._unload_lora)
        self._lora_names: dict[int, str] = {}  # engine id -> model id, while loaded

    @property
    def model(self) -> ServedModel:
        if self._model is None:
            raise EngineDead(self.reason)
        return self._model

    @property
    def llm(self) -> AsyncLLM:
        if self._llm is None or self.state not in (EngineState.READY, EngineState.STOPPED):
            raise EngineDead(self.reason)
        return self._llm

    async def wait_loaded(self) -> EngineState:
        await self._loaded.wait()
        return self.state

    async def start(self) -> None:
        started = time.monotonic()
        try:
            await self._load()
        except Exception as error:  # a failed load is reported, not raised: the port stays up
            self.state = EngineState.FAILED
            self.reason = f"the model failed to load: {error}"
            log.exception("model failed to load")
            return
        finally:
            self._loaded.set()
        frozen = freeze_startup_heap()
        self.state = EngineState.READY
        self.reason = "the model is ready"
        log.info(
            "model %s ready in %.1f s (max_model_len=%d; %d startup objects frozen out of "
            "the garbage collector's scans)",
            self.model.name,
            time.monotonic() - started,
            self.model.max_model_len,
            frozen,
        )

    async def _load(self) -> None:
        settings = self._settings
        cache = default_cache_path(settings)
        self.reason = "the model is being prepared"
        # Everything below blocks for seconds to minutes (imports, conversion, weights);
        # threads keep the event loop, and so the health endpoints, responsive meanwhile.
        resolved = await asyncio.to_thread(
            resolve_model, settings.model, settings.served_model_name, cache
        )
        self.reason = f"the model {resolved.served_name} is loading"
        log.info("loading %s from %s", resolved.served_name, resolved.path)
        self._llm = await asyncio.to_thread(_create_async_llm, settings, resolved, cache)
        config = self._llm.model_config
        self._model = ServedModel(
            name=resolved.served_name,
            root=resolved.path,
            source=resolved.source,
            max_model_len=config.max_model_len,
            vocab_size=config.get_vocab_size(),
            max_num_seqs=self._llm.vllm_config.scheduler_config.max_num_seqs,
            created=int(time.time()),
        )

    async def stop(self) -> None:
        llm, self._llm = self._llm, None
        if self.state in (EngineState.LOADING, EngineState.READY):
            self.state = EngineState.STOPPED
            self.reason = "the server is shutting down"
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)

    def check_health(self) -> EngineState:
        if self.state is EngineState.READY and self._llm is not None and self._llm.errored:
            self.state = EngineState.DEAD
            self.reason = "the inference engine died; the server must be restarted"
            log.error("inference engine died")
        return self.state

    async def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        template_kwargs: dict[str, Any],
    ) -> EnginePrompt:
        from vllm.exceptions import VLLMValidationError
        from vllm.renderers.params import ChatParams, TokenizeParams

        params = ChatParams(
            chat_template=self._chat_template,
            chat_template_kwargs={
                **template_kwargs,
                "add_generation_prompt": add_generation_prompt,
            },
        )
        # Length limits are checked by the serving layer, which words the error for clients.
        tokenize = TokenizeParams(max_total_tokens=None, add_special_tokens=False)
        try:
            _, prompts = await self.llm.renderer.render_chat_async(
                [list(messages)], params, tokenize
            )
        except (VLLMValidationError, ValueError, TypeError, KeyError) as error:
            # The chat template rejected the conversation (e.g. roles out of order).
            raise EngineRequestError(f"the chat template rejected the messages: {error}") from None
        return _engine_prompt(prompts[0])

    async def render_text(self, prompt: str | list[int]) -> EnginePrompt:
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        from vllm.renderers.params import TokenizeParams

        llm = self.llm
        raw: object = prompt if isinstance(prompt, str) else {"prompt_token_ids": prompt}
        parsed = parse_model_prompt(llm.model_config, raw)
        tokenize = TokenizeParams(max_total_tokens=None, add_special_tokens=True)
        (rendered,) = await llm.renderer.render_cmpl_async([parsed], tokenize)
        return _engine_prompt(rendered)

    @property
    def adapters(self) -> Mapping[str, ServedModel]:
        return self._adapters

    async def add_adapter(self, name: str, path: str, rank: int) -> ServedModel:
        from vllm.v1.engine.exceptions import EngineDeadError

        lora = LoraAdapter(name=name, path=path, rank=rank, engine_id=next(self._adapter_ids))
        try:
            # Loading now checks the adapter against the model (target modules, rank, weight
            # shapes) before any request names it, and warms the engine's adapter cache.
            await self.llm.add_lora(_lora_request(lora))
        except EngineDeadError:
            self.check_health()
            raise EngineDead(self.reason) from None
        except Exception as error:  # the engine core reports a failed load as a plain error
            raise EngineRequestError(str(error)) from None
        self._lora_names[lora.engine_id] = name
        self._lora_slots.loaded(lora)
        base = self.model
        served = dataclasses.replace(
            base, name=name, root=path, parent=base.name, lora=lora, created=int(time.time())
        )
        self.remove_adapter(name)  # a reload: the previous version goes once it is unused
        self._adapters[name] = served
        return served

    def remove_adapter(self, name: str) -> None:
        served = self._adapters.pop(name, None)
        if served is None or served.lora is None:
            return
        running = self._lora_slots.retire(served.lora)
        if running:
            log.info(
                "LoRA adapter %s (engine id %d) stays loaded until its %d running request(s) end",
                name,
                served.lora.engine_id,
                running,
            )

    async def _unload_lora(self, lora: LoraAdapter) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            llm = self.llm
            await llm.remove_lora(lora.engine_id)
            held = await llm.list_loras()
        except (EngineDead, EngineDeadError):
            return  # a stopped or dead engine holds nothing to release
        finally:
            self._lora_names.pop(lora.engine_id, None)
        log.info(
            "LoRA adapter %s (engine id %d) unloaded from the engine; it holds: %s",
            lora.name,
            lora.engine_id,
            ", ".join(sorted(self._lora_names.get(i, f"id {i}") for i in held)) or "none",
        )

    async def generate(
        self,
        prompt: EnginePrompt,
        params: SamplingParams,
        request_id: str,
        lora: LoraAdapter | None = None,
    ) -> AsyncIterator[RequestOutput]:
        from vllm.exceptions import VLLMClientError, VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError

        lora_request = None
        if lora is not None:
            # Taken before the engine sees the request, so the adapter cannot be unloaded
            # under it; refused if the adapter was removed while the prompt was rendered.
            if not self._lora_slots.acquire(lora):
                raise AdapterRemoved(lora.name)
            lora_request = _lora_request(lora)
        try:
            # aclosing: if our caller stops early, close vLLM's generator now, which aborts the
            # request in the engine, instead of whenever it is garbage collected.
            async with contextlib.aclosing(
                self.llm.generate(
                    prompt.engine_input, params, request_id, lora_request=lora_request
                )
            ) as outputs:
                async for output in outputs:
                    if output.finished and any(
                        o.finish_reason in _FAILED_FINISHES for o in output.outputs
                    ):
                        # The engine gave up on the request (e.g. its process is dying): not
                        # a normal end of the answer, whatever the partial text looks like.
                        if self.check_health() is EngineState.DEAD:
                            raise EngineDead(self.reason)
                        if params.structured_outputs is not None:
                            # A grammar that passes vLLM's up-front check can still fail to
                            # compile in the engine core, which then aborts the request alone.
                            raise EngineRequestError(
                                "the structured-output constraint could not be compiled: "
                                "check the grammar, regex or schema"
                            )
                        raise EngineFailure("the engine aborted the request")
                    yield output
        except VLLMValidationError as error:
            raise EngineRequestError(str(error.args[0]), error.parameter) from None
        except VLLMClientError as error:
            raise EngineRequestError(str(error)) from None
        except EngineDeadError:
            self.check_health()
            raise EngineDead(self.reason) from None
        finally:
            if lora is not None:
                self._lora_slots.release(lora)

    def tokenizer(self) -> TokenizerLike:
        return self._tokenizer

    @property
    def _tokenizer(self) -> TokenizerLike:
        tokenizer = self.llm.tokenizer
        if tokenizer is None:  # only for engines started with skip_tokenizer_init
            raise EngineDead("the engine has no tokenizer")
        return tokenizer

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(token_ids)))

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        tokenizer = self._tokenizer
        return [str(tokenizer.decode([token_id])) for token_id in token_ids]


# Finish reasons that mean the engine failed the request rather than completed it; an abort
# we asked for (client gone) never reaches a reader.
_FAILED_FINISHES = frozenset({"abort", "error"})


def freeze_startup_heap() -> int:
    """Move every object alive now out of reach of the garbage collector; their number.

    Loading imports torch, transformers and vLLM into this process: over 600,000 tracked
    objects that live until exit. Each full collection scanned them all, stopping the event loop
    (and every stream) for 350-400 ms on this machine's CPU. vLLM's own server freezes its
    startup heap for the same reason.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _create_async_llm(settings: Settings, resolved: ResolvedModel, cache: Path) -> AsyncLLM:
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.engine.async_llm import AsyncLLM

    on_cpu = current_platform.is_cpu()
    kv_bytes: int | None = settings.kv_cache_bytes
    if kv_bytes is None and on_cpu:
        kv_bytes = DEFAULT_CPU_KV_CACHE_BYTES
    # Unset settings are left out so the engine derives them from the model and the device.
    optional: dict[str, Any] = {
        "max_model_len": settings.max_model_len,
        "kv_cache_memory_bytes": kv_bytes,
        "max_num_seqs": settings.max_num_seqs,
        "enable_prefix_caching": settings.enable_kv_cache_reuse,
        "tokenizer_mode": settings.tokenizer_mode,
        # Structured outputs then constrain the answer only, after the model's thinking.
        "reasoning_parser": settings.reasoning_parser,
    }
    if settings.peft_source is not None:
        optional |= _lora_engine_args(settings)
    ours: dict[str, Any] = dict(
        model=resolved.path,
        served_model_name=[resolved.served_name],
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        **{name: value for name, value in optional.items() if value is not None},
        download_dir=str(cache / "hub"),
        trust_remote_code=settings.trust_custom_code,
        # CUDA graphs buy nothing on CPU and cost start-up time.
        enforce_eager=on_cpu,
        distributed_executor_backend=executor_backend(settings),
        disable_log_stats=False,  # feeds the Prometheus metrics
        structured_outputs_config=StructuredOutputsConfig(
            backend=settings.guided_decoding_backend.value
        ),
    )
    # NIM_PASSTHROUGH_ARGS come last and win, as NIM appends them to the engine's arguments.
    args = AsyncEngineArgs(**{**ours, **passthrough_overrides(settings.passthrough_args)})
    return AsyncLLM.from_engine_args(args)


# The ranks vLLM can reserve room for; a NIM_MAX_LORA_RANK in between is rounded up here, and
# adapters above the setting itself are still refused when they are scanned.
_ENGINE_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _lora_engine_args(settings: Settings) -> dict[str, Any]:
    return {
        "enable_lora": True,
        "max_lora_rank": next(r for r in _ENGINE_LORA_RANKS if r >= settings.max_lora_rank),
        "max_loras": settings.max_gpu_loras,
        "max_cpu_loras": settings.max_cpu_loras,
    }


def _lora_request(lora: LoraAdapter) -> LoRARequest:
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=lora.name, lora_int_id=lora.engine_id, lora_path=lora.path)


def _engine_prompt(rendered: Any) -> EnginePrompt:
    return EnginePrompt(token_ids=list(rendered["prompt_token_ids"]), engine_input=rendered)
