"""Locust: closed-loop users streaming chat completions from llm-sim.

Each user is Locust's standard HttpUser (a requests session), posts with
stream=True and reads every server-sent event as it arrives, parsing its
JSON, with no wait between requests. Settings come from the environment
(bench/peers.py sets them): PEERS_MAX_TOKENS, PEERS_MODEL, PEERS_PROMPT; the
users, run time and host are Locust's own flags.
"""

import json
import os

from locust import HttpUser, constant, task

BODY = {
    "model": os.environ["PEERS_MODEL"],
    "messages": [{"role": "user", "content": os.environ["PEERS_PROMPT"]}],
    "max_tokens": int(os.environ["PEERS_MAX_TOKENS"]),
    "stream": True,
}


class Chat(HttpUser):
    wait_time = constant(0)

    @task
    def chat(self):
        with self.client.post(
            "/v1/chat/completions", json=BODY, stream=True, catch_response=True
        ) as response:
            events = 0
            for line in response.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    events += 1
            if events:
                response.success()
            else:
                response.failure("no events in the stream")
