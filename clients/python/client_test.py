"""Tests of the deltaserve Python clients against a running deltaserve-server
serving the embedded demo model.

client_test.sh starts the server and runs this file with:
  DELTASERVE_SERVER   the server's HOST:PORT
  DELTASERVE_GOLDEN   engine/model/demo-qwen35/golden.json
  DELTASERVE_EXAMPLE  clients/python/examples/generate.py
and PYTHONPATH holding the deltaserve package with its generated modules.
Every call has a deadline, so a broken server fails the test instead of
hanging it.
"""

import asyncio
import json
import os
import subprocess
import sys
import threading
import unittest

import grpc

import deltaserve

SERVER = os.environ["DELTASERVE_SERVER"]
with open(os.environ["DELTASERVE_GOLDEN"], encoding="utf-8") as golden_file:
    GOLDEN = json.load(golden_file)
PROMPT = GOLDEN["prompts"][0]
MODEL = "demo-qwen35"
TIMEOUT_S = 60.0


class SyncClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = deltaserve.Client(SERVER, timeout=TIMEOUT_S)

    def tearDown(self) -> None:
        self.client.close()

    def assert_golden(self, result: deltaserve.Generation) -> None:
        self.assertEqual(result.token_ids, PROMPT["greedy32_ids"])
        self.assertEqual(result.text, PROMPT["greedy32_text"])
        self.assertEqual(result.finish_reason, deltaserve.FinishReason.LENGTH)
        self.assertEqual(result.completion.prompt_tokens, len(PROMPT["prompt_ids"]))
        self.assertEqual(result.completion.completion_tokens, 32)

    def test_greedy_text_matches_golden(self) -> None:
        result = self.client.generate_text(
            PROMPT["text"], max_new_tokens=32, ignore_eos=True,
            request_id="py-greedy")
        self.assert_golden(result)
        self.assertEqual(result.completion.request_id, "py-greedy")
        self.assertGreaterEqual(result.completion.time_to_first_token_s, 0.0)
        self.assertEqual(result.completion.matched_stop, "")
        self.assertEqual(result.logprobs, [])

    def test_stream_yields_chunks_then_one_completion(self) -> None:
        items = list(self.client.generate(
            PROMPT["text"], max_new_tokens=32, ignore_eos=True))
        self.assertIsInstance(items[-1], deltaserve.Completion)
        chunks = items[:-1]
        self.assertTrue(chunks)
        self.assertTrue(all(isinstance(c, deltaserve.Chunk) for c in chunks))
        self.assertEqual([t for c in chunks for t in c.token_ids],
                         PROMPT["greedy32_ids"])
        self.assertEqual("".join(c.text for c in chunks), PROMPT["greedy32_text"])
        counts = [c.completion_tokens for c in chunks]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(counts[-1], 32)
        self.assertEqual(items[-1].completion_tokens, 32)

    def test_token_ids_prompt(self) -> None:
        result = self.client.generate_text(
            token_ids=PROMPT["prompt_ids"], max_new_tokens=8, model=MODEL)
        self.assertEqual(result.token_ids, PROMPT["greedy32_ids"][:8])
        self.assertEqual(result.completion.prompt_tokens, len(PROMPT["prompt_ids"]))

    def test_bytes_prompt(self) -> None:
        result = self.client.generate_text(
            PROMPT["text"].encode("utf-8"), max_new_tokens=4)
        self.assertEqual(result.token_ids, PROMPT["greedy32_ids"][:4])

    def test_prompt_and_token_ids_together_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            self.client.generate(PROMPT["text"], token_ids=[1, 2])
        with self.assertRaises(ValueError):
            self.client.generate()

    def test_stop_string(self) -> None:
        stop = "directory"
        expected = PROMPT["greedy32_text"][:PROMPT["greedy32_text"].index(stop)]
        for stop_arg in (stop, [stop, "never-generated"], [stop.encode()]):
            result = self.client.generate_text(
                PROMPT["text"], max_new_tokens=32, stop=stop_arg)
            self.assertEqual(result.text, expected)
            self.assertEqual(result.finish_reason, deltaserve.FinishReason.STOP)
            self.assertEqual(result.completion.matched_stop, stop)

    def test_stop_token_id(self) -> None:
        stop_id = PROMPT["greedy32_ids"][3]
        self.assertNotIn(stop_id, PROMPT["greedy32_ids"][:3])
        result = self.client.generate_text(
            PROMPT["text"], max_new_tokens=32, stop_token_ids=[stop_id])
        self.assertEqual(result.token_ids, PROMPT["greedy32_ids"][:4])
        self.assertEqual(result.finish_reason, deltaserve.FinishReason.STOP)

    def test_logprobs(self) -> None:
        result = self.client.generate_text(
            PROMPT["text"], max_new_tokens=8, top_logprobs=3)
        self.assertEqual(len(result.logprobs), 8)
        for token_id, position in zip(result.token_ids, result.logprobs):
            self.assertEqual(position.sampled.id, token_id)
            self.assertEqual(len(position.top), 3)
            self.assertEqual(position.top[0].id, token_id)  # greedy
            values = [t.logprob for t in position.top]
            self.assertEqual(values, sorted(values, reverse=True))
            self.assertLessEqual(values[0], 0.0)

    def test_list_and_get_models(self) -> None:
        models = self.client.list_models()
        self.assertEqual([m.name for m in models], [MODEL])
        model = models[0]
        self.assertTrue(model.is_default)
        self.assertTrue(model.has_tokenizer)
        self.assertEqual(model.architecture, "qwen3_5_text")
        self.assertIn(deltaserve.LayerKind.GATED_DELTA_RULE, model.layer_kinds)
        self.assertIn(deltaserve.LayerKind.GLOBAL_ATTENTION, model.layer_kinds)
        self.assertGreater(model.vocab_size, max(PROMPT["greedy32_ids"]))
        self.assertGreater(model.recurrent_state_bytes, 0)
        self.assertEqual(self.client.get_model(MODEL), model)

    def test_unknown_model_is_not_found(self) -> None:
        with self.assertRaises(deltaserve.DeltaserveError) as caught:
            self.client.get_model("no-such-model")
        self.assertIsInstance(caught.exception, deltaserve.NotFoundError)
        self.assertEqual(caught.exception.code, "NOT_FOUND")
        self.assertEqual(caught.exception.status_code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("no-such-model", caught.exception.message)
        with self.assertRaises(deltaserve.NotFoundError):
            self.client.generate_text("x", max_new_tokens=1, model="no-such-model")

    def test_health(self) -> None:
        self.assertEqual(self.client.health(), deltaserve.HealthStatus.SERVING)
        self.assertEqual(self.client.health("deltaserve.v1.Inference"),
                         deltaserve.HealthStatus.SERVING)
        with self.assertRaises(deltaserve.NotFoundError):
            self.client.health("no.such.Service")

    def test_invalid_request(self) -> None:
        with self.assertRaises(deltaserve.DeltaserveError) as caught:
            self.client.generate_text(PROMPT["text"], max_new_tokens=4, top_p=2)
        self.assertIsInstance(caught.exception, deltaserve.InvalidArgumentError)
        self.assertEqual(caught.exception.code, "INVALID_ARGUMENT")
        self.assertIn("top_p", caught.exception.message)
        # The server keeps serving.
        self.assertEqual(
            self.client.generate_text(PROMPT["text"], max_new_tokens=4).token_ids,
            PROMPT["greedy32_ids"][:4])

    def test_breaking_out_cancels_and_the_server_still_serves(self) -> None:
        stream = self.client.generate(
            PROMPT["text"], max_new_tokens=4000, ignore_eos=True)
        for item in stream:
            self.assertIsInstance(item, deltaserve.Chunk)
            break
        self.assertTrue(stream.cancel())
        self.assertTrue(stream.cancelled)
        self.assertEqual(list(stream), [])
        self.assertIsNone(stream.completion)
        self.assertEqual(stream._call.code(), grpc.StatusCode.CANCELLED)

        # A stream left by `break` and dropped is cancelled too, as is one
        # left through a `with` block.
        for _ in self.client.generate(PROMPT["text"], max_new_tokens=4000):
            break
        with self.client.generate(PROMPT["text"], max_new_tokens=4000) as stream:
            next(stream)
        self.assertTrue(stream.cancelled)

        self.assert_golden(self.client.generate_text(
            PROMPT["text"], max_new_tokens=32, ignore_eos=True))

    def test_deadline(self) -> None:
        with self.assertRaises(deltaserve.DeadlineExceededError) as caught:
            self.client.generate_text(
                PROMPT["text"], max_new_tokens=4000, ignore_eos=True, timeout=0.3)
        self.assertEqual(caught.exception.code, "DEADLINE_EXCEEDED")
        self.assertEqual(self.client.health(), deltaserve.HealthStatus.SERVING)

    def test_concurrent_requests_from_threads(self) -> None:
        results = {}

        def run(index: int) -> None:
            prompt = GOLDEN["prompts"][index]
            results[index] = self.client.generate_text(
                prompt["text"], max_new_tokens=32, ignore_eos=True)

        threads = [threading.Thread(target=run, args=(i,))
                   for i in range(len(GOLDEN["prompts"]))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT_S)
        for index, prompt in enumerate(GOLDEN["prompts"]):
            self.assertEqual(results[index].token_ids, prompt["greedy32_ids"])
            self.assertEqual(results[index].text, prompt["greedy32_text"])

    def test_closed_client(self) -> None:
        with deltaserve.Client(SERVER, timeout=TIMEOUT_S) as client:
            client.wait_ready(TIMEOUT_S)
            self.assertEqual(client.health(), deltaserve.HealthStatus.SERVING)
        client.close()  # Idempotent.
        with self.assertRaises(ValueError):
            client.health()

    def test_unreachable_server(self) -> None:
        # Port 1 on loopback: nothing listens there.
        with deltaserve.Client("127.0.0.1:1", timeout=10) as client:
            with self.assertRaises(deltaserve.UnavailableError) as caught:
                client.health()
            self.assertEqual(caught.exception.code, "UNAVAILABLE")
            with self.assertRaises(deltaserve.UnavailableError):
                client.wait_ready(0.2)


class AsyncClientTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.client = deltaserve.AsyncClient(SERVER, timeout=TIMEOUT_S)

    async def asyncTearDown(self) -> None:
        await self.client.close()

    async def test_greedy_text_matches_golden(self) -> None:
        result = await self.client.generate_text(
            PROMPT["text"], max_new_tokens=32, ignore_eos=True)
        self.assertEqual(result.token_ids, PROMPT["greedy32_ids"])
        self.assertEqual(result.text, PROMPT["greedy32_text"])
        self.assertEqual(result.finish_reason, deltaserve.FinishReason.LENGTH)

    async def test_stream_and_token_ids_prompt(self) -> None:
        items = [item async for item in self.client.generate(
            token_ids=PROMPT["prompt_ids"], max_new_tokens=8)]
        self.assertIsInstance(items[-1], deltaserve.Completion)
        self.assertEqual([t for c in items[:-1] for t in c.token_ids],
                         PROMPT["greedy32_ids"][:8])

    async def test_concurrent_generations(self) -> None:
        results = await asyncio.gather(*(
            self.client.generate_text(p["text"], max_new_tokens=32, ignore_eos=True)
            for p in GOLDEN["prompts"]))
        self.assertEqual([r.token_ids for r in results],
                         [p["greedy32_ids"] for p in GOLDEN["prompts"]])

    async def test_models_and_health(self) -> None:
        models = await self.client.list_models()
        self.assertEqual([m.name for m in models], [MODEL])
        self.assertEqual(await self.client.get_model(MODEL), models[0])
        with self.assertRaises(deltaserve.NotFoundError) as caught:
            await self.client.get_model("no-such-model")
        self.assertEqual(caught.exception.code, "NOT_FOUND")
        self.assertEqual(await self.client.health(), deltaserve.HealthStatus.SERVING)

    async def test_invalid_request(self) -> None:
        with self.assertRaises(deltaserve.InvalidArgumentError) as caught:
            await self.client.generate_text(PROMPT["text"], top_p=2)
        self.assertEqual(caught.exception.code, "INVALID_ARGUMENT")
        self.assertIn("top_p", caught.exception.message)

    async def test_stop_string(self) -> None:
        result = await self.client.generate_text(
            PROMPT["text"], max_new_tokens=32, stop="directory")
        self.assertEqual(result.completion.matched_stop, "directory")
        self.assertEqual(result.finish_reason, deltaserve.FinishReason.STOP)
        self.assertFalse(result.text.endswith("directory"))

    async def test_breaking_out_cancels_and_the_server_still_serves(self) -> None:
        async with self.client.generate(
                PROMPT["text"], max_new_tokens=4000, ignore_eos=True) as stream:
            async for item in stream:
                self.assertIsInstance(item, deltaserve.Chunk)
                break
        self.assertTrue(stream.cancelled)
        self.assertEqual([item async for item in stream], [])
        result = await self.client.generate_text(
            PROMPT["text"], max_new_tokens=32, ignore_eos=True)
        self.assertEqual(result.token_ids, PROMPT["greedy32_ids"])

    async def test_task_cancellation_cancels_the_call(self) -> None:
        stream = self.client.generate(PROMPT["text"], max_new_tokens=4000,
                                      ignore_eos=True)

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        self.assertEqual(await self.client.health(), deltaserve.HealthStatus.SERVING)

    async def test_deadline(self) -> None:
        with self.assertRaises(deltaserve.DeadlineExceededError):
            await self.client.generate_text(
                PROMPT["text"], max_new_tokens=4000, ignore_eos=True, timeout=0.3)


class ExampleTest(unittest.TestCase):
    def test_example_streams_the_golden_text(self) -> None:
        completed = subprocess.run(
            [sys.executable, os.environ["DELTASERVE_EXAMPLE"], "--server", SERVER,
             "--prompt", PROMPT["text"], "--max_new_tokens", "32", "--timeout", "60"],
            capture_output=True, text=True, timeout=TIMEOUT_S + 30)
        self.assertEqual(completed.returncode, 0, completed.stderr)
        self.assertEqual(completed.stdout, PROMPT["greedy32_text"] + "\n")

    def test_example_reports_errors(self) -> None:
        completed = subprocess.run(
            [sys.executable, os.environ["DELTASERVE_EXAMPLE"], "--server", SERVER,
             "--prompt", "x", "--max_new_tokens", "0", "--timeout", "60"],
            capture_output=True, text=True, timeout=TIMEOUT_S + 30)
        self.assertEqual(completed.returncode, 1)
        self.assertRegex(completed.stderr,
                         r"^error: INVALID_ARGUMENT: .*max_new_tokens")


if __name__ == "__main__":
    unittest.main(verbosity=2)
