"""The real server on a free localhost port, driven by the official `openai` client."""

import concurrent.futures as cf
import json

import httpx
import openai
import pytest
import torch
from openai import OpenAI

from tunewright.dataset.example import Message
from tunewright.dataset.tokenize import ChatTokenizer
from tunewright.errors import TunewrightError
from tunewright.inference.generate import generate
from tunewright.runs import load_tuned
from tunewright.serve.registry import load_models
from tunewright.serve.server import check_bind, start_server
from tunewright.serve.settings import ServeSettings

QUESTIONS = ["I lost my card.", "Where is my new card?", "What is the exchange rate?", "hi"]


@pytest.fixture(scope="module")
def models(tiny_model_dir, tiny_run):
    return load_models([str(tiny_model_dir), str(tiny_run)])


@pytest.fixture(scope="module")
def server(models):
    running = start_server(
        models, ServeSettings(port=0, max_tokens=64, max_n=2, max_request_bytes=4096)
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def ask(client, model, question, **kwargs):
    kwargs = {"temperature": 0, "max_tokens": 12, **kwargs}
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], **kwargs
    )


def test_lists_the_base_and_the_tuned_adapter(client, tiny_model_dir):
    assert [m.id for m in client.models.list()] == [tiny_model_dir.name, "tuned"]
    assert client.models.retrieve("tuned").id == "tuned"


def test_the_adapter_answers_as_the_tuned_model_does(client, tiny_run, tiny_model_dir):
    """Selecting the adapter by name gives the tuned model's greedy answers (with the run's system
    prompt); the base model name gives the base model's."""
    tuned = load_tuned(tiny_run, dtype=torch.float32)  # the precision the server loads in
    chat = ChatTokenizer(tuned.tokenizer, tuned.cfg.data.system_prompt, 256)
    prompts = [chat.encode_prompt((Message("user", q),)) for q in QUESTIONS]
    expected = [
        g.text
        for g in generate(tuned.model, tuned.tokenizer, prompts, max_new_tokens=12, batch_size=1)
    ]
    served = [ask(client, "tuned", q).choices[0].message.content.strip() for q in QUESTIONS]
    assert served == expected
    base = [ask(client, tiny_model_dir.name, q).choices[0].message.content for q in QUESTIONS]
    assert base != served


def test_answer_shape_and_usage(client):
    answer = ask(client, "tuned", QUESTIONS[0])
    assert answer.object == "chat.completion" and answer.model == "tuned"
    assert (
        answer.choices[0].finish_reason in ("stop", "length")
        and answer.choices[0].message.role == "assistant"
    )
    assert answer.usage.prompt_tokens > 0 and 0 < answer.usage.completion_tokens <= 12


def test_streaming_gives_the_same_answer_in_pieces(client):
    whole = ask(client, "tuned", QUESTIONS[1])
    chunks = list(
        ask(client, "tuned", QUESTIONS[1], stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_endpoint_with_several_prompts_and_n(client):
    answer = client.completions.create(
        model="tuned", prompt=["I lost", "my card"], n=2, max_tokens=5, temperature=0.8, seed=3
    )
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    again = client.completions.create(
        model="tuned", prompt=["I lost", "my card"], n=2, max_tokens=5, temperature=0.8, seed=3
    )
    assert [c.text for c in again.choices] == [
        c.text for c in answer.choices
    ]  # seeded sampling repeats


def test_concurrent_clients_get_what_one_at_a_time_gets(client, tiny_model_dir):
    """16 clients at once are batched together (rows joining and leaving the running batch) and
    still get exactly the greedy answers they get alone."""
    names = ["tuned", tiny_model_dir.name]
    work = [(names[i % 2], f"{QUESTIONS[i % 4]} {i}", 4 + i % 9) for i in range(16)]

    def one(item):
        model, question, max_tokens = item
        return ask(client, model, question, max_tokens=max_tokens).choices[0].message.content

    alone = [one(item) for item in work]
    with cf.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(one, work))
    assert together == alone


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "nope"}, openai.NotFoundError, "model"),
        ({"max_tokens": 65}, openai.BadRequestError, "max_tokens"),
        ({"n": 3}, openai.BadRequestError, "n"),
        ({"messages": []}, openai.BadRequestError, "messages"),
        ({"temperature": 3}, openai.BadRequestError, "temperature"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            openai.BadRequestError,
            "tools",
        ),
        ({"messages": [{"role": "user", "content": "x" * 5000}]}, openai.APIStatusError, None),
    ],
)
def test_bad_requests_get_an_error_in_openais_shape(client, kwargs, error, param):
    request = {"model": "tuned", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**request)
    body = caught.value.body
    assert body["message"] and body["type"] and body.get("param") == param
    if param is None:
        assert caught.value.status_code == 413


def test_invalid_json_and_unknown_routes(server):
    bad = httpx.post(
        server.url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    # bytes that decode as no text at all (found by benchmarks/fuzz_apis.py): a 400, not a 500
    for route in ("/v1/chat/completions", "/v1/completions"):
        undecodable = httpx.post(
            server.url + route,
            content=b"\xb8\rn\xffh",
            headers={"content-type": "application/json"},
        )
        assert undecodable.status_code == 400, undecodable.text
        assert "not valid JSON" in undecodable.json()["error"]["message"]
    missing = httpx.get(server.url + "/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def test_health_reports_the_models(server, tiny_model_dir):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["models"] == [tiny_model_dir.name, "tuned"]


def test_a_request_that_outlives_its_timeout_fails_cleanly(models):
    running = start_server(models, ServeSettings(port=0, request_timeout_s=1e-6))
    try:
        client = OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            ask(client, "tuned", "hi")
        assert caught.value.status_code == 504 and "timed out" in caught.value.body["message"]
    finally:
        running.stop()


def test_api_key_is_required_everywhere_but_health(models):
    running = start_server(models, ServeSettings(port=0, api_key="s3cret"))
    try:
        url = running.url + "/v1"
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        missing = httpx.get(url + "/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(running.url + "/health").status_code == 200
        assert ask(OpenAI(base_url=url, api_key="s3cret", max_retries=0), "tuned", "hi").choices
    finally:
        running.stop()


def test_refuses_to_bind_beyond_loopback_without_a_key():
    with pytest.raises(TunewrightError, match="refusing to bind to 0.0.0.0 without an API key"):
        check_bind(ServeSettings(host="0.0.0.0"))
    check_bind(ServeSettings(host="0.0.0.0", api_key="k"))
    check_bind(ServeSettings(host="::1"))
    assert json.loads(ServeSettings().model_dump_json())["host"] == "127.0.0.1"


def test_cli_refuses_a_public_address_before_loading_anything(tiny_model_dir):
    from typer.testing import CliRunner

    from tunewright.cli import app

    result = CliRunner().invoke(
        app, ["serve", str(tiny_model_dir), "--host", "0.0.0.0"], env={"TUNEWRIGHT_API_KEY": ""}
    )
    assert result.exit_code == 1 and "without an API key" in result.output


def test_accepted_connections_send_without_nagle_delay():
    """asyncio turns TCP_NODELAY on only for sockets created as TCP; with it off, a response
    written in parts (headers, then body) waits for the client's delayed ACK on kept-alive
    connections."""
    import asyncio
    import socket

    from tunewright.serve.server import listen

    server_sock = listen(ServeSettings(host="127.0.0.1", port=0))
    seen: list[int] = []

    async def main():
        def accepted(reader, writer):
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=server_sock)
        port = server_sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(main())
    assert seen and seen[0] != 0
