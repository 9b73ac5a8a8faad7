"""The OpenAI Agents SDK against the server's Responses API (OpenAIResponsesModel).

The agent's first turn forces its function tool (ModelSettings.tool_choice), so the random
model's call is constrained to the tool's schema. After a tool call the SDK resets tool_choice
to the default, "auto", which needs a server with auto tool choice: the whole loop (call, run
the tool, answer) runs against one started with vLLM's pythonic parser, where the random model's
text is not a call and so is the final answer (JSON of the agent's output type, which the
text format makes end by itself).
"""

from __future__ import annotations

from typing import Literal

import openai
import pydantic
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
)

from tests.server import test_tools
from tests.server.conftest import SERVED_NAME
from tests.support.server_process import ServerProcess

no_whitespace = test_tools.no_whitespace  # the fixture: logit_bias forbidding whitespace tokens
CALLS: list[str] = []


@function_tool
def get_weather(city: Literal["Paris", "Rome"]) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"Sunny in {city}"


def weather_agent(
    client: openai.AsyncOpenAI, no_whitespace: dict[str, int], **options: object
) -> Agent[None]:
    settings = ModelSettings(
        tool_choice="get_weather",
        temperature=0,
        max_tokens=60,
        # The JSON grammar allows whitespace anywhere, which the random model would write until
        # max_tokens; the server takes vLLM's sampling extras on /v1/responses too.
        extra_body={"logit_bias": no_whitespace},
    )
    return Agent(
        name="weather",
        instructions="Answer questions about the weather.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=SERVED_NAME, openai_client=client),
        model_settings=settings,
        **options,  # type: ignore[arg-type]
    )


NO_TRACING = RunConfig(tracing_disabled=True)  # the SDK would export traces to OpenAI


@pytest.fixture(autouse=True)
def no_calls_yet() -> None:
    CALLS.clear()


async def test_agent_calls_its_tool_and_stops_with_the_result(
    async_oai: openai.AsyncOpenAI, no_whitespace: dict[str, int]
) -> None:
    agent = weather_agent(async_oai, no_whitespace, tool_use_behavior="stop_on_first_tool")
    result = await Runner.run(agent, "What is the weather in Paris?", run_config=NO_TRACING)
    (city,) = CALLS
    assert result.final_output == f"Sunny in {city}"
    (response,) = result.raw_responses
    assert response.response_id is not None
    assert response.response_id.startswith("resp-")
    assert response.usage.output_tokens > 0


class Report(pydantic.BaseModel):
    city: Literal["Paris", "Rome"]
    sky: Literal["sunny", "rainy"]


@pytest.mark.parametrize("streamed", [False, True])
async def test_agent_runs_the_whole_tool_loop(
    auto_server: ServerProcess, no_whitespace: dict[str, int], streamed: bool
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{auto_server.base_url}/v1", api_key="-", max_retries=0)
    # The output type makes the answer after the call JSON (text.format), which ends by itself.
    agent = weather_agent(client, no_whitespace, output_type=Report)
    question = "What is the weather in Rome?"
    if streamed:
        run = Runner.run_streamed(agent, question, run_config=NO_TRACING)
        kinds = {event.type async for event in run.stream_events()}
        assert "raw_response_event" in kinds
        result = run
    else:
        result = await Runner.run(agent, question, run_config=NO_TRACING)  # type: ignore[assignment]
    (city,) = CALLS
    assert city in {"Paris", "Rome"}
    first, second = result.raw_responses
    # The second turn sent the call and its output back as input items: the model's answer.
    assert isinstance(result.final_output, Report)
    assert second.usage.input_tokens > first.usage.input_tokens
    item_types = [item.type for item in result.new_items]
    assert item_types == ["tool_call_item", "tool_call_output_item", "message_output_item"]
